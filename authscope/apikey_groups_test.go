package authscope

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// keyGroupsPolicy: every signed-in user reads blumeops/**, the provider's
// group artifact-workloads pushes there, and the config's group ops
// (alice, while the config says so) deletes there.
func keyGroupsPolicy(t *testing.T, opsMembers ...string) *Policy {
	t.Helper()
	groups := map[string][]string{}
	if len(opsMembers) > 0 {
		groups["ops"] = opsMembers
	}
	p, err := NewPolicy(PolicyConfig{
		ExternalGroups: true,
		Groups:         groups,
		Repositories: map[string]RepositoryPolicy{
			"blumeops/**": {Default: []string{ActionRead}, Policies: []Grant{
				{Groups: []string{"artifact-workloads"}, Actions: []string{ActionRead, ActionCreate}},
				{Groups: []string{"ops"}, Actions: []string{ActionDelete}},
			}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	keyPush = Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull, ScopePush)}}
	keyPull = Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopePull)}}
	keyDel  = Need{Scopes: []Scope{RepositoryScope("blumeops/app", ScopeDelete)}}
)

// keyStatus is the status a in answers need with key as the Basic
// password: 0 when allowed.
func keyStatus(t *testing.T, a *Authorizer, key string, need Need) int {
	t.Helper()
	r := httptest.NewRequest(http.MethodPut, "/v2/blumeops/app/manifests/v1", nil)
	r.SetBasicAuth("alice", key)
	_, err := a.Authorize(r, need)
	var d *Denial
	switch {
	case err == nil:
		return 0
	case errors.As(err, &d):
		return d.Status
	}
	t.Fatalf("authorize: %v", err)
	return -1
}

// TestAPIKeyGroupsLapseWithoutSignIn: a key's groups (from the ID token)
// count for GroupsMaxAge after its owner's last sign-in, then no more;
// the owner's name-based rights stay. Before, a key kept its groups for
// its whole life (up to a year).
func TestAPIKeyGroupsLapseWithoutSignIn(t *testing.T) {
	clk := newClock()
	keys := &APIKeys{Store: newMemKeys(), Now: clk.Now}
	a, err := NewAuthorizer(Options{Policy: keyGroupsPolicy(t), APIKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := keys.Create("alice", []string{"artifact-workloads"}, "ci", 0)
	if err != nil {
		t.Fatal(err)
	}
	if s := keyStatus(t, a, key, keyPush); s != 0 {
		t.Fatalf("fresh key's push: %d", s)
	}
	clk.Add(DefaultAPIKeyGroupsMaxAge - time.Minute)
	if s := keyStatus(t, a, key, keyPush); s != 0 {
		t.Fatalf("push just before groups_max_age: %d", s)
	}
	clk.Add(time.Minute)
	if s := keyStatus(t, a, key, keyPush); s != http.StatusForbidden {
		t.Fatalf("push past groups_max_age: %d, want 403", s)
	}
	if s := keyStatus(t, a, key, keyPull); s != 0 {
		t.Fatalf("the owner's own rights past groups_max_age: %d", s)
	}

	// A shorter groups_max_age applies to keys made before it.
	keys.GroupsMaxAge = time.Hour
	key2, _, _ := keys.Create("alice", []string{"artifact-workloads"}, "", 0)
	clk.Add(time.Hour)
	if s := keyStatus(t, a, key2, keyPush); s != http.StatusForbidden {
		t.Fatalf("push past a configured groups_max_age: %d, want 403", s)
	}
}

// TestAPIKeyGroupsOfOldRecords: a key stored before groups_as_of was kept
// counts its creation as the last refresh of its groups.
func TestAPIKeyGroupsOfOldRecords(t *testing.T) {
	clk := newClock()
	store := newMemKeys()
	keys := &APIKeys{Store: store, Now: clk.Now}
	a, err := NewAuthorizer(Options{Policy: keyGroupsPolicy(t), APIKeys: keys})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		age  time.Duration
		want int
	}{{24 * time.Hour, 0}, {DefaultAPIKeyGroupsMaxAge + time.Hour, http.StatusForbidden}} {
		key, rec, err := keys.Create("alice", []string{"artifact-workloads"}, "", 0)
		if err != nil {
			t.Fatal(err)
		}
		// The record as the version before wrote it: no groups_as_of.
		created := clk.Now().Add(-tc.age).UTC().Truncate(time.Second)
		old := map[string]any{"id": rec.ID, "hash": rec.Hash, "user": "alice", "groups": []string{"artifact-workloads"},
			"created": created, "expires": created.Add(DefaultAPIKeyTTL)}
		b, _ := json.Marshal(old)
		store.mu.Lock()
		store.recs[rec.ID] = b
		store.mu.Unlock()
		if s := keyStatus(t, a, key, keyPush); s != tc.want {
			t.Fatalf("old key made %s ago: push %d, want %d", tc.age, s, tc.want)
		}
	}
}

// TestAPIKeyConfigGroupsAreCurrent: groups of the config are never kept
// in a key; the policy reads them by the owner's name as they are now,
// so taking alice out of a group line takes the rights from her keys at
// the next reload. (This held before too; the test keeps it so.)
func TestAPIKeyConfigGroupsAreCurrent(t *testing.T) {
	keys := &APIKeys{Store: newMemKeys()}
	key, _, err := keys.Create("alice", nil, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	with, _ := NewAuthorizer(Options{Policy: keyGroupsPolicy(t, "alice"), APIKeys: keys})
	without, _ := NewAuthorizer(Options{Policy: keyGroupsPolicy(t, "bob"), APIKeys: keys})
	if s := keyStatus(t, with, key, keyDel); s != 0 {
		t.Fatalf("delete as a member of ops: %d", s)
	}
	if s := keyStatus(t, without, key, keyDel); s != http.StatusForbidden {
		t.Fatalf("delete after leaving ops: %d, want 403", s)
	}
}

// TestAPIKeyGroupsRefreshedAtSignIn: each sign-in of a key's owner gives
// the key the groups of that sign-in's ID token: a group the provider
// took away is gone from the key at once, and lapsed groups count again.
// The key listing says when a key's groups lapsed.
func TestAPIKeyGroupsRefreshedAtSignIn(t *testing.T) {
	s := newSite(t, "alice", "artifact-workloads")
	a, err := NewAuthorizer(Options{Policy: keyGroupsPolicy(t), APIKeys: s.keys})
	if err != nil {
		t.Fatal(err)
	}
	c := browser(t)
	if status, _ := s.signIn(t, c); status != http.StatusOK {
		t.Fatal(status)
	}
	_, sess := s.session(t, c)
	status, b := s.api(t, c, "POST", "apikeys", sess["csrf_token"].(string), map[string]any{"label": "ci"})
	var created struct{ Key string }
	if err := json.Unmarshal(b, &created); err != nil || status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, b)
	}
	if st := keyStatus(t, a, created.Key, keyPush); st != 0 {
		t.Fatalf("push with the new key: %d", st)
	}

	// The provider takes alice out of artifact-workloads; she signs in.
	s.p.SetUser("alice")
	if status, _ := s.signIn(t, browser(t)); status != http.StatusOK {
		t.Fatal(status)
	}
	if st := keyStatus(t, a, created.Key, keyPush); st != http.StatusForbidden {
		t.Fatalf("push after a sign-in without the group: %d, want 403", st)
	}

	// Back in the group; her key's groups lapse, the listing says so,
	// and her next sign-in renews them.
	s.p.SetUser("alice", "artifact-workloads")
	s.keys.GroupsMaxAge = time.Hour // shorter than a session, to list it
	c = browser(t)
	if status, _ := s.signIn(t, c); status != http.StatusOK {
		t.Fatal(status)
	}
	if st := keyStatus(t, a, created.Key, keyPush); st != 0 {
		t.Fatalf("push after a sign-in with the group: %d", st)
	}
	s.clock.Add(time.Hour)
	if st := keyStatus(t, a, created.Key, keyPush); st != http.StatusForbidden {
		t.Fatalf("push with lapsed groups: %d, want 403", st)
	}
	status, b = s.api(t, c, "GET", "apikeys", "", nil)
	if status != http.StatusOK || !strings.Contains(string(b), `"groups_stale":true`) {
		t.Fatalf("list with lapsed groups: %d %s", status, b)
	}
	resp, err := c.Get(s.URL + AuthPath)
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(page), "groups-stale") || !strings.Contains(string(page), "sign in again") {
		t.Fatalf("page with lapsed groups:\n%s", page)
	}
	if status, _ := s.signIn(t, c); status != http.StatusOK {
		t.Fatal(status)
	}
	if st := keyStatus(t, a, created.Key, keyPush); st != 0 {
		t.Fatalf("push after signing in again: %d", st)
	}
	if _, b := s.api(t, c, "GET", "apikeys", "", nil); !strings.Contains(string(b), `"groups_stale":false`) {
		t.Fatalf("list after signing in again: %s", b)
	}
}

// TestAPIKeyFromAnOlderSession: a key made in a session gets that
// session's groups as of its sign-in, not as of the key's making, and
// never older groups than the user's latest sign-in gave their keys: a
// session left open in another browser does not bring back a group the
// provider took away, nor stretch its life.
func TestAPIKeyFromAnOlderSession(t *testing.T) {
	s := newSite(t, "alice", "artifact-workloads")
	s.keys.GroupsMaxAge = 6 * time.Hour // shorter than a session
	a, err := NewAuthorizer(Options{Policy: keyGroupsPolicy(t), APIKeys: s.keys})
	if err != nil {
		t.Fatal(err)
	}
	makeKey := func(c *http.Client) string {
		t.Helper()
		_, sess := s.session(t, c)
		status, b := s.api(t, c, "POST", "apikeys", sess["csrf_token"].(string), map[string]any{"label": "ci"})
		var created struct{ Key string }
		if err := json.Unmarshal(b, &created); err != nil || status != http.StatusCreated {
			t.Fatalf("create: %d %s", status, b)
		}
		return created.Key
	}
	old := browser(t)
	if status, _ := s.signIn(t, old); status != http.StatusOK {
		t.Fatal(status)
	}
	// Made 5 hours into a session whose groups count 6 hours: an hour.
	s.clock.Add(5 * time.Hour)
	key := makeKey(old)
	s.clock.Add(time.Hour)
	if st := keyStatus(t, a, key, keyPush); st != http.StatusForbidden {
		t.Fatalf("push 6h after the sign-in that gave the group: %d, want 403", st)
	}

	// Alice signs in again (with the group), and an hour later elsewhere
	// without it; the first session's next key gets the newer word.
	old = browser(t)
	if status, _ := s.signIn(t, old); status != http.StatusOK {
		t.Fatal(status)
	}
	s.clock.Add(time.Hour)
	s.p.SetUser("alice")
	if status, _ := s.signIn(t, browser(t)); status != http.StatusOK {
		t.Fatal(status)
	}
	key = makeKey(old)
	if st := keyStatus(t, a, key, keyPush); st != http.StatusForbidden {
		t.Fatalf("push with a key an older session made after a sign-in without the group: %d, want 403", st)
	}
}
