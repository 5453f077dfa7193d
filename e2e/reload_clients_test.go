package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestReloadClientsPush pushes images with crane, skopeo and podman, each
// in a loop, while the config is reloaded ten times through the admin
// API. Every push must succeed: crane retries failed requests itself,
// skopeo is given --retry-times (its default is none), podman's push
// retries three times by itself (podman 4.3 has no --retry flag yet).
func TestReloadClientsPush(t *testing.T) {
	crane, skopeo, podman := tool(t, "crane"), tool(t, "skopeo"), tool(t, "podman")
	s, cfg := reloadServer(t, "")
	src := writeLayout(t, ociImage(t))
	conf := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(conf, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"CONTAINERS_REGISTRIES_CONF=" + conf}
	base := podmanBase(t)
	// podman pushes from its own storage: load the image once, before
	// the reloads.
	podmanImage := s.addr + "/reload/seed:v1"
	run(t, nil, crane, "push", "--insecure", src, podmanImage)
	run(t, env, podman, append(base, "pull", "--tls-verify=false", podmanImage)...)

	push := map[string]func(ref string) []string{
		"crane": func(ref string) []string { return []string{crane, "push", "--insecure", src, ref} },
		"skopeo": func(ref string) []string {
			return []string{skopeo, "copy", "--retry-times", "3", "--dest-tls-verify=false", "oci:" + src, "docker://" + ref}
		},
		"podman": func(ref string) []string {
			return append(append([]string{podman}, base...), "push", "--tls-verify=false", podmanImage, "docker://"+ref)
		},
	}
	done := make(chan struct{})
	go reloadRepeatedly(t, s, cfg, 10, 400*time.Millisecond, done)
	var wg sync.WaitGroup
	var mu sync.Mutex
	pushes := map[string]int{}
	for name, args := range push {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-done:
					return
				default:
				}
				a := args(fmt.Sprintf("%s/reload/%s:t%d", s.addr, name, n))
				cmd := exec.Command(a[0], a[1:]...)
				cmd.Env = append(os.Environ(), env...)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Errorf("%s push %d during reloads: %v\n%s", name, n, err, out)
					return
				}
				mu.Lock()
				pushes[name]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	t.Logf("pushes during 10 reloads: %v", pushes)
	for name := range push {
		if pushes[name] == 0 {
			t.Errorf("%s finished no push during the reloads", name)
		}
	}
}
