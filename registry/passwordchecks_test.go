package registry

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/caddy-oci/caddy-oci/authscope"
)

// ciHtpasswd returns an htpasswd file listing ci (password "ci-pw") at
// bcrypt cost 11, and the fastest of three comparisons against it on
// this machine, by which the tests size their floods.
func ciHtpasswd(t *testing.T) (file []byte, one time.Duration) {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("ci-pw"), 11)
	if err != nil {
		t.Fatal(err)
	}
	one = time.Hour
	for range 3 {
		start := time.Now()
		_ = bcrypt.CompareHashAndPassword(hash, []byte("wrong"))
		one = min(one, time.Since(start))
	}
	return []byte("ci:" + string(hash) + "\n"), one
}

// TestPasswordChecksBounded: wrong passwords for made-up user names, sent
// at once from where no login bound stops them (many addresses; here no
// login_limit), run their bcrypt comparisons at most half the CPUs at a
// time, and a login that waits too long for its turn is answered 429
// TOOMANYREQUESTS with Retry-After, unchecked, instead of each adding a
// comparison to the CPUs: with the comparisons at the cost caddy
// hash-password writes (14), twenty addresses within login_limit's
// default bounds kept both CPUs of a registry busy and an anonymous
// manifest GET took a second instead of 2 ms. Every answer is a 401 or a
// 429, never a 500.
//
// The logins sent are enough to keep the comparisons' share of CPUs busy
// for three times the wait for a turn, at the machine's measured speed. Before
// the bound, all of them were compared at once and answered 401: no 429.
func TestPasswordChecksBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("runs bcrypt comparisons for about 10 s")
	}
	file, one := ciHtpasswd(t)
	hp, err := authscope.ParseHtpasswd(file)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{"pub/**": {Anonymous: []string{"read"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol}, "")

	turns := max(1, runtime.GOMAXPROCS(0)/2)
	const wait = 10 * time.Second // the wait for a turn
	logins := int(3*wait/one)*turns + 2*turns
	t.Logf("one comparison %s: %d logins for %d turns", one, logins, turns)

	var mu sync.Mutex
	statuses := map[int]int{}
	var retryAfter []string
	var wg sync.WaitGroup
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxConnsPerHost: 0, MaxIdleConnsPerHost: logins}}
	for i := range logins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, ar.srv.URL+"/v2/pub/app/tags/list", nil)
			req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(fmt.Sprintf("nobody%d:wrong", i))))
			resp, err := client.Do(req)
			if err != nil {
				t.Errorf("login %d: %v", i, err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			defer mu.Unlock()
			statuses[resp.StatusCode]++
			if resp.StatusCode == http.StatusTooManyRequests {
				retryAfter = append(retryAfter, resp.Header.Get("Retry-After"))
			}
		}()
	}
	wg.Wait()
	t.Logf("answers: %v", statuses)
	for s := range statuses {
		if s != http.StatusUnauthorized && s != http.StatusTooManyRequests {
			t.Errorf("%d answers %d, want 401 or 429", statuses[s], s)
		}
	}
	if statuses[http.StatusTooManyRequests] == 0 {
		t.Fatalf("no login was refused as one too many at once: the %d comparisons ran together", logins)
	}
	for _, ra := range retryAfter {
		if ra == "" {
			t.Fatal("a 429 without Retry-After")
		}
	}
}

// TestPasswordChecksBurstOfOneAccount: many jobs starting at once with
// one account's good credentials wait for one comparison, not one each:
// the bound on comparisons at once must not turn a CI burst into 429s.
//
// The cost is low enough that one comparison stays far below the wait
// for a turn (authscope.TurnWait) on a loaded machine: at cost 12 under
// the race detector, with the rest of CI running, the burst's one
// comparison took about 10 s, and the jobs waiting for it timed out
// (6 of 8 answered 429), which tests the machine, not the bound.
func TestPasswordChecksBurstOfOneAccount(t *testing.T) {
	const cost = 10
	hash, err := bcrypt.GenerateFromPassword([]byte("ci-pw"), cost)
	if err != nil {
		t.Fatal(err)
	}
	hp, err := authscope.ParseHtpasswd([]byte("ci:" + string(hash) + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{"pub/**": {Anonymous: []string{"read"}, Default: []string{"read"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ar := newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol}, "")
	start := time.Now()
	_ = bcrypt.CompareHashAndPassword(hash, []byte("ci-pw"))
	one := time.Since(start)
	// More jobs than the turns could compare within the wait one by one.
	jobs := int(2*authscope.TurnWait/one) + 2
	var wg sync.WaitGroup
	var mu sync.Mutex
	statuses := map[int]int{}
	client := &http.Client{Timeout: time.Minute}
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, ar.srv.URL+"/v2/pub/app/tags/list", nil)
			req.SetBasicAuth("ci", "ci-pw")
			resp, err := client.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			mu.Lock()
			statuses[resp.StatusCode]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	t.Logf("%d jobs (one comparison %s): %v", jobs, one, statuses)
	if statuses[http.StatusTooManyRequests] > 0 || statuses[http.StatusUnauthorized] > 0 {
		t.Errorf("answers %v: good credentials refused", statuses)
	}
}

// TestPasswordChecksKnownAddressNotStarved: wrong passwords for made-up
// user names from many addresses take every turn for bcrypt comparisons
// (no login bound stops them: each address stays within its own), so a
// good login that is not remembered waited behind them and got 429 after
// the 10 s wait for a turn. Measured on the binary: 40 loopback addresses
// sending 10 such logins at once each, and alice's first login of the
// day from the address she logged in from before answered 429 after
// 10.0 s (9.9 s and a 200 with 20 addresses; 1.6 s without the flood):
// the wait for a turn, whole, then a coin toss with the flood's own
// waits ending.
// A login of an account from an address that logged in to it before (a
// pair the login bounds know) now also has turns of its own, which no
// made-up name, and no listed one from a new address, can take.
func TestPasswordChecksKnownAddressNotStarved(t *testing.T) {
	if testing.Short() {
		t.Skip("runs bcrypt comparisons for about 10 s")
	}
	file, one := ciHtpasswd(t)
	pol, err := authscope.NewPolicy(authscope.PolicyConfig{
		Repositories: map[string]authscope.RepositoryPolicy{"pub/**": {Anonymous: []string{"read"}, Default: []string{"read"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// One login ledger, two htpasswd copies: the second has not
	// remembered ci's password, as a process an hour later has not.
	guesses := authscope.NewGuesses(authscope.GuessLimits{PerClient: -1, PerAccount: -1})
	clientIP := func(r *http.Request) string { return r.Header.Get("X-Test-Client") }
	registryOf := func() *authRegistry {
		hp, err := authscope.ParseHtpasswd(file)
		if err != nil {
			t.Fatal(err)
		}
		return newAuthRegistry(t, authscope.Options{Htpasswd: hp, Policy: pol, Guesses: guesses, ClientIP: clientIP}, "")
	}
	login := func(client *http.Client, ar *authRegistry, from, user, pass string) (int, time.Duration) {
		req, _ := http.NewRequest(http.MethodGet, ar.srv.URL+"/v2/", nil)
		req.Header.Set("X-Test-Client", from)
		req.Header.Set("Authorization", "Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("login of %s from %s: %v", user, from, err)
			return 0, 0
		}
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}
	if code, _ := login(http.DefaultClient, registryOf(), "10.0.0.1", "ci", "ci-pw"); code != http.StatusOK {
		t.Fatalf("ci's first login: %d", code)
	}

	ar := registryOf()
	turns := max(1, runtime.GOMAXPROCS(0)/2)
	const wait = 10 * time.Second // the wait for a turn
	logins := int(3*wait/one)*turns + 2*turns
	t.Logf("one comparison %s: %d wrong logins for %d turns", one, logins, turns)
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: logins}}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := range logins {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Sent again as soon as answered, from a new address each
			// time, as long as ci's login takes: the queue for turns
			// never empties.
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				// Made-up names, and ci's own from new addresses: a
				// name being listed earns no turn of the known ones.
				user := fmt.Sprintf("nobody%d-%d", i, n)
				if i%2 == 1 {
					user = "ci"
				}
				login(client, ar, fmt.Sprintf("10.%d.%d.%d", 1+n, i/250, i%250), user, "wrong")
			}
		}()
	}
	time.Sleep(time.Second) // the flood queued for its turns
	code, took := login(http.DefaultClient, ar, "10.0.0.1", "ci", "ci-pw")
	close(stop)
	wg.Wait()
	// Its own comparison and little else: not the wait for a turn
	// behind the flood (the whole wait, then often 429).
	if code != http.StatusOK || took > wait/2 {
		t.Fatalf("ci's login from its known address during the flood: %d after %s, want 200 within %s", code, took.Round(time.Millisecond), wait/2)
	}
	t.Logf("ci's login during the flood: %d in %s", code, took.Round(time.Millisecond))
}
