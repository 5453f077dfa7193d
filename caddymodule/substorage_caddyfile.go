package caddymodule

import (
	"fmt"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/caddy-oci/caddy-oci/registry/substore"
)

// unmarshalSubStorage parses
//
//	sub_storage <prefix> {
//		storage <folder>
//		metadata_dir <folder>
//		storage_reserve <size>|<percent>%|off
//		upload_ttl <duration>
//		gc_interval <duration>|off
//		gc_grace <duration>
//		gc_full_interval <duration>
//		scrub_interval <duration>|off
//		scrub_rate <size>
//	}
//
// and refuses, on its line, a prefix that nests in an earlier one.
func (rg *Registry) unmarshalSubStorage(d *caddyfile.Dispenser) error {
	at := positionOf(d)
	var prefix string
	if !d.Args(&prefix) {
		return d.Err("sub_storage needs a name prefix and a block with its storage folder")
	}
	if d.NextArg() {
		return d.Errf("sub_storage takes one name prefix, then a block; got %q too", d.Val())
	}
	s := &SubStorage{Prefix: prefix}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		sub := d.Val()
		args := d.RemainingArgs()
		if sub == "storage_reserve" {
			// The top level's parser, on a scratch registry.
			var tmp Registry
			if err := tmp.unmarshalReserve(d, args); err != nil {
				return err
			}
			s.StorageReserve, s.StorageReservePercent = tmp.StorageReserve, tmp.StorageReservePercent
			continue
		}
		if len(args) != 1 {
			return d.Errf("sub_storage %s: %s needs exactly one argument", prefix, sub)
		}
		arg := args[0]
		switch sub {
		case "storage":
			if arg == "s3" {
				return d.Errf("sub_storage %s: storage s3 is not supported in a sub_storage; give a folder", prefix)
			}
			s.Storage = arg
		case "metadata_dir":
			s.MetadataDir = arg
		case "upload_ttl", "gc_interval", "gc_grace", "gc_full_interval", "scrub_interval":
			dur, err := parseStoreDuration(d, sub, arg)
			if err != nil {
				return err
			}
			*map[string]*caddy.Duration{
				"upload_ttl": &s.UploadTTL, "gc_interval": &s.GCInterval,
				"gc_grace": &s.GCGrace, "gc_full_interval": &s.GCFullInterval,
				"scrub_interval": &s.ScrubInterval,
			}[sub] = caddy.Duration(dur)
		case "scrub_rate":
			rate, err := parseScrubRate(d, arg)
			if err != nil {
				return err
			}
			s.ScrubRate = rate
		default:
			return d.Errf("unrecognized sub_storage subdirective %q (known: storage, metadata_dir, storage_reserve, upload_ttl, gc_interval, gc_grace, gc_full_interval, scrub_interval, scrub_rate)", sub)
		}
	}
	if s.Storage == "" {
		return d.Errf("sub_storage %s needs `storage <folder>` in its block", prefix)
	}
	rg.SubStorages = append(rg.SubStorages, s)
	prefixes := make([]string, len(rg.SubStorages))
	for i, x := range rg.SubStorages {
		prefixes[i] = x.Prefix
	}
	if err := substore.CheckPrefixes(prefixes); err != nil {
		return at.wrap(fmt.Errorf("sub_storage: %w", err))
	}
	return nil
}
