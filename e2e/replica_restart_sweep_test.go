package e2e

import "testing"

// TestReplicaPostgresRestartedMidSweep and TestReplicaS3RestartedMidSweep
// are TestReplicaPostgresStoppedMidSweep and TestReplicaS3StoppedMidSweep
// with the server killed (PostgreSQL with pg_ctl -m immediate, versitygw
// with SIGKILL) instead of stopped, and started again 25 s later: every
// pooled connection of both replicas is dead when it returns, where a
// SIGCONT finds them alive. The same rules hold: pushes retried on 503
// all end in 201, every acknowledged image is whole, the sweep's marks
// are finished and GC goes on, and no lease is left held.
func TestReplicaPostgresRestartedMidSweep(t *testing.T) {
	c := startCluster(t, 2, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", nil)
	stoppedMidSweep(t, c, c.pg.Kill, c.pg.Start)
}

func TestReplicaS3RestartedMidSweep(t *testing.T) {
	c := startCluster(t, 2, "\t\tgc_interval 1s\n\t\tgc_grace 4s\n", nil)
	stoppedMidSweep(t, c, func() error { c.s3.Kill(); return nil }, func() error { c.s3.Restart(t); return nil })
}
