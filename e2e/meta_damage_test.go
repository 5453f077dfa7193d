package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDamagedMetadataTable: a table of the metadata folder that a crash on
// a disk without write barriers left with its last pages zeroed (its
// length recorded, its data not). The server must refuse to start with an
// error that names the table, not die of a panic in badger's goroutine at
// every start; with the table whole again it serves what it held.
func TestDamagedMetadataTable(t *testing.T) {
	needBinary(t)
	dataDir := filepath.Join(t.TempDir(), "data")
	s := newServer(t, dataDir)
	var images []churnImage
	for range 5 {
		im := newChurnImage(t)
		if !im.pushBlobs(s, "damage/app") || !im.putManifest(s, "damage/app", im.digest[7:19]) {
			t.Fatalf("push failed: %v", churnSample.Load())
		}
		images = append(images, im)
	}
	// A clean stop flushes the memtable into a table.
	if err := s.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	<-s.done
	tables, _ := filepath.Glob(filepath.Join(dataDir, "meta", "*.sst"))
	if len(tables) == 0 {
		t.Fatal("no table in meta/ after a clean stop")
	}
	sst := tables[len(tables)-1]
	whole, err := os.ReadFile(sst)
	if err != nil {
		t.Fatal(err)
	}
	damaged := append([]byte(nil), whole...)
	clear(damaged[max(0, len(damaged)-4096):])
	if err := os.WriteFile(sst, damaged, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, caddyBin, "run", "--config", s.config, "--adapter", "caddyfile").CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("still running with %s damaged:\n%s", filepath.Base(sst), out)
	}
	if err == nil || strings.Contains(string(out), "panic:") ||
		!strings.Contains(string(out), "metadata table damaged") || !strings.Contains(string(out), filepath.Base(sst)) {
		t.Fatalf("with %s damaged, want an exit with an error naming it, no panic; got %v:\n%s", filepath.Base(sst), err, out)
	}

	if err := os.WriteFile(sst, whole, 0o644); err != nil {
		t.Fatal(err)
	}
	s.start()
	for _, im := range images {
		checkImage(t, s, "damage/app", im.digest[7:19], "with the table whole again")
	}
}
