package migrate

import (
	"bytes"
	"context"
	"fmt"
	"time"
)

// copyAuth copies API keys, live sessions and secrets. A record the
// destination has already is left as it is: it may have changed there
// since (a key used, revoked and made again), and the destination is the
// one serving.
func (r *run) copyAuth(ctx context.Context) error {
	keys, err := r.src.APIKeyRecords()
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	for _, k := range keys {
		if _, err := r.auth.APIKey(k.ID); err == nil {
			r.sum.APIKeysPresent++
			continue
		}
		if err := r.auth.CreateAPIKey(k.ID, k.Record); err != nil {
			if err := r.fail(ctx, "API key "+k.ID, err); err != nil {
				return err
			}
			continue
		}
		r.sum.APIKeys++
	}
	sessions, err := r.src.Sessions()
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	for _, s := range sessions {
		if !s.Expires.After(time.Now()) {
			continue // expired while we ran; badger lists it until compaction
		}
		if _, err := r.auth.Session(s.ID); err == nil {
			r.sum.SessionsPresent++
			continue
		}
		if err := r.auth.CreateSession(s.ID, s.Record, s.Expires); err != nil {
			if !s.Expires.After(time.Now()) {
				continue
			}
			if err := r.fail(ctx, "session "+s.ID, err); err != nil {
				return err
			}
			continue
		}
		r.sum.Sessions++
	}
	secrets, err := r.src.AuthSecrets()
	if err != nil {
		return fmt.Errorf("source: %w", err)
	}
	for _, s := range secrets {
		stored, created, err := r.auth.ImportAuthSecret(s.ID, s.Record)
		switch {
		case err != nil:
			if err := r.fail(ctx, "secret "+s.ID, err); err != nil {
				return err
			}
		case !bytes.Equal(stored, s.Record):
			// Sessions copied were sealed with the folder's key; the
			// destination's would not open them.
			if err := r.fail(ctx, "secret "+s.ID, fmt.Errorf("the destination has another one already (a replica ran on it before the migration); its sessions signed in on the folder will have to sign in again")); err != nil {
				return err
			}
		case created:
			r.sum.Secrets++
		default:
			r.sum.SecretsPresent++
		}
	}
	return nil
}
