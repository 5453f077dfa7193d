package authscope

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

func bcryptAt(t *testing.T, password string, cost int) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(password), cost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// TestHtpasswdDummyCost: the hash an unknown user's login is compared
// against has the cost most of the file's hashes have (the higher on a
// tie), whatever that cost and whichever bcrypt variant the file uses.
func TestHtpasswdDummyCost(t *testing.T) {
	four, five, six := bcryptAt(t, "a", 4), bcryptAt(t, "b", 5), bcryptAt(t, "c", 6)
	for _, tc := range []struct {
		name  string
		users []string
		want  int
	}{
		{"one cost, as htpasswd -B writes", []string{"a:" + five, "b:" + five}, 5},
		{"most users at one cost", []string{"a:" + four, "b:" + four, "c:" + six}, 4},
		{"a tie takes the higher", []string{"a:" + four, "c:" + six}, 6},
		{"the 2y variant", []string{"a:" + strings.Replace(six, "$2a$", "$2y$", 1)}, 6},
		{"no users", nil, bcrypt.DefaultCost},
	} {
		h, err := ParseHtpasswd([]byte(strings.Join(tc.users, "\n")))
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got, err := bcrypt.Cost(h.dummy); err != nil || got != tc.want {
			t.Errorf("%s: dummy cost %d (%v), want %d", tc.name, got, err, tc.want)
		}
	}
}

// TestHtpasswdUnknownUserTiming: through HTTP, a failed login for a user
// not in the file takes no longer than a wrong password for one who is
// (bcrypt cost 4 here; a fixed dummy of cost 10 took over ten times as
// long). The quickest of several tries is compared, with a wide margin,
// so that a loaded machine does not make it fail.
func TestHtpasswdUnknownUserTiming(t *testing.T) {
	a, err := NewAuthorizer(Options{
		Htpasswd: testHtpasswd(t, map[string]string{"ci": "ci-pw", "root": "root-pw"}),
		Policy:   blumeopsPolicy(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := a.Authorize(r, Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull, ScopePush)}}); err != nil {
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	t.Cleanup(srv.Close)
	quickest := func(user string) time.Duration {
		best := time.Hour
		for range 7 {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+"/v2/", nil)
			req.SetBasicAuth(user, "wrong")
			start := time.Now()
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			best = min(best, time.Since(start))
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("%s: status %d", user, resp.StatusCode)
			}
		}
		return best
	}
	known, unknown := quickest("ci"), quickest("ghost")
	if unknown > 4*known+20*time.Millisecond {
		t.Errorf("unknown user %s, listed user %s: a login tells who exists", unknown, known)
	}
}

// TestHtpasswdRememberedLoginsKeepPairsApart: a good login is
// remembered by user and password together; another user whose name and
// password join to the same bytes is not let in by it.
func TestHtpasswdRememberedLoginsKeepPairsApart(t *testing.T) {
	h, err := ParseHtpasswd([]byte("a:" + bcryptAt(t, "b\x00c", bcrypt.MinCost)))
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := h.Check(t.Context(), "a", "b\x00c", 0); !ok || err != nil {
		t.Fatalf("a's own password: %v, %v", ok, err)
	}
	if ok, _ := h.Check(t.Context(), "a\x00b", "c", 0); ok {
		t.Fatal(`user "a\x00b" with password "c" was let in by a's remembered login`)
	}
	if h.Remembers("a\x00b", "c") {
		t.Fatal(`"a\x00b"/"c" counted as remembered`)
	}
}
