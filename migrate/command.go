package migrate

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore"
	fsblobs "github.com/caddy-oci/caddy-oci/cache/blobstore/fs"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
	"github.com/caddy-oci/caddy-oci/cache/coord"
	"github.com/caddy-oci/caddy-oci/cache/metastore"
	"github.com/caddy-oci/caddy-oci/cache/metastore/badgermeta"
	"github.com/caddy-oci/caddy-oci/caddymodule"
	"github.com/caddy-oci/caddy-oci/pgmeta"
)

// Environment variables the command reads its secrets from, so that they
// appear neither in the shell's history nor in the process list (and the
// command never prints them).
const (
	EnvS3AccessKey = "S3_ACCESS_KEY"
	EnvS3SecretKey = "S3_SECRET_KEY"
	EnvPostgres    = "DATABASE_URL"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "oci",
		Short: "Tools of the caddy-oci registry (migrate)",
		Long:  "Tools of the caddy-oci registry. `caddy oci migrate --help` describes the migration of a storage folder to S3, PostgreSQL or both.",
		CobraFunc: func(c *cobra.Command) {
			c.AddCommand(NewCommand())
		},
	})
}

// commandConfig is what the flags and the environment say.
type commandConfig struct {
	from, fromMeta string
	// The destination: a config file's oci_registry settings, or the
	// flags named after them.
	config, adapter string
	s3              s3.Config
	partSize        string
	dsn             string
	storage         string
	storageShared   bool
	metadataDir     string
	verify          bool
	jobs            int
}

// NewCommand is `caddy oci migrate`.
func NewCommand() *cobra.Command {
	var cc commandConfig
	c := &cobra.Command{
		Use:   "migrate --from <storage folder> (--config <Caddyfile or JSON> | <destination flags>) [--jobs N] [--verify=false]",
		Short: "Copy a storage folder into S3, PostgreSQL or both",
		Long: `Copies what a single-node registry's storage folder holds (blobs, blob
links with their times, manifests, tags, referrers, mirror tag fetch times,
API keys, sign-in sessions and their key) into the storage and metadata
of another setup, checking every blob's digest as it goes and, unless
--verify=false, re-reading everything from the destination at the end.

The destination is one of the setups the registry runs on:
  storage s3 { ... } + metadata postgres <dsn>     (replicas)
  storage s3 { ... } + metadata_dir <dir>          (one node, object storage)
  storage <dir> { shared } + metadata postgres <dsn> (replicas on a shared folder)
given either as the config the new server will run (--config, the
oci_registry handler's storage and metadata settings are read from it), or
as flags named after those settings:
  --s3-bucket, --s3-endpoint, --s3-region, --s3-prefix, --s3-path-style,
  --s3-part-size                  storage s3 { bucket ... part_size }
  --storage <dir> --storage-shared  storage <dir> { shared }
  --postgres <dsn>                metadata postgres <dsn>
  --metadata-dir <dir>            metadata_dir <dir>

Stop the server that uses the folder first (the metadata database locks
it). The destination must not be in use either: an embedded database a
server holds is refused (it locks its folder), and so is a PostgreSQL
database with connections of a running replica (application_name
caddy-oci in pg_stat_activity).
Upload sessions in progress are not copied: let them finish or expire.
Running it again copies only what is missing, so an interrupted run is
finished by running it again.

Secrets come from the environment (or the config's {env.*} placeholders),
never from flags:
  S3_ACCESS_KEY, S3_SECRET_KEY  (unset: the AWS environment's credentials)
  DATABASE_URL                  the PostgreSQL DSN, unless --postgres or
                                --metadata-dir is given

It exits with status 1 if anything was not copied or differs, naming it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cc.s3.Bucket != "" {
				cc.s3.AccessKey = os.Getenv(EnvS3AccessKey)
				cc.s3.SecretKey = os.Getenv(EnvS3SecretKey)
			}
			if cc.dsn == "" && cc.metadataDir == "" && cc.config == "" {
				cc.dsn = os.Getenv(EnvPostgres)
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt)
			defer stop()
			cmd.SilenceUsage = true // a failed run is not a usage mistake
			return runCommand(ctx, cc, cmd.OutOrStdout())
		},
	}
	f := c.Flags()
	f.StringVar(&cc.from, "from", "", "the storage folder (the registry's storage setting)")
	f.StringVar(&cc.fromMeta, "from-metadata-dir", "", "the registry's metadata_dir, if it had one")
	f.StringVar(&cc.config, "config", "", "the new server's config (Caddyfile or JSON): the destination is its oci_registry storage and metadata")
	f.StringVar(&cc.adapter, "adapter", "", "the config adapter of --config (as for caddy run)")
	f.StringVar(&cc.s3.Bucket, "s3-bucket", "", "bucket (storage s3: bucket); it must exist")
	f.StringVar(&cc.s3.Endpoint, "s3-endpoint", "", "S3 server URL (storage s3: endpoint); omit for AWS")
	f.StringVar(&cc.s3.Region, "s3-region", "", "region (storage s3: region)")
	f.StringVar(&cc.s3.Prefix, "s3-prefix", "", "key prefix (storage s3: prefix)")
	f.BoolVar(&cc.s3.PathStyle, "s3-path-style", false, "path-style addressing (storage s3: path_style)")
	f.StringVar(&cc.partSize, "s3-part-size", "", "upload part size such as 8MiB (storage s3: part_size)")
	f.StringVar(&cc.storage, "storage", "", "a folder every replica mounts (storage <dir> { shared }); needs --storage-shared")
	f.BoolVar(&cc.storageShared, "storage-shared", false, "the --storage folder is shared by the replicas (storage <dir> { shared })")
	f.StringVar(&cc.dsn, "postgres", "", "PostgreSQL DSN (metadata postgres); default $DATABASE_URL, which keeps a password out of the process list")
	f.StringVar(&cc.metadataDir, "metadata-dir", "", "the embedded metadata's folder of a one-node setup on S3 (metadata_dir)")
	f.IntVar(&cc.jobs, "jobs", 4, "blobs copied at once")
	f.BoolVar(&cc.verify, "verify", true, "re-read every blob from the destination and compare manifests and tags at the end")
	return c
}

func runCommand(ctx context.Context, cc commandConfig, out io.Writer) error {
	if cc.from == "" {
		return errors.New("--from: the storage folder to copy is required")
	}
	if cc.jobs < 1 || cc.jobs > 64 {
		return fmt.Errorf("--jobs %d: want 1 to 64", cc.jobs)
	}
	b, err := cc.destination()
	if err != nil {
		return err
	}
	if b.MetadataDir != "" {
		srcMeta := cache.Options{Dir: cc.from, MetadataDir: cc.fromMeta}.DatabaseDir()
		if same, err := sameFolder(srcMeta, b.MetadataDir); err == nil && same {
			return fmt.Errorf("destination metadata_dir %s is the storage folder's own metadata: name a new folder", b.MetadataDir)
		}
	}
	src, err := OpenSource(cc.from, cc.fromMeta)
	if err != nil {
		return err
	}
	defer src.Close()
	if b.Folder != "" {
		if same, err := sameFolder(cc.from, b.Folder); err != nil {
			return err
		} else if same {
			fmt.Fprintf(out, "the destination folder is the storage folder: blobs stay where they are and are verified there\n")
		}
	}
	dst, err := OpenDestination(ctx, b)
	if err != nil {
		return err
	}
	defer dst.Close()

	fmt.Fprintf(out, "migrating %s to %s\n", cc.from, dst.Describe)
	sum, err := Run(ctx, src, dst.Target, Options{
		Verify:   cc.verify,
		Jobs:     cc.jobs,
		Progress: func(line string) { fmt.Fprintln(out, line) },
	})
	fmt.Fprintln(out, sum)
	return err
}

// destination reads the destination from --config or from the flags,
// through the registry's own checks of its settings either way, so that
// the command takes exactly what a server would run on.
func (cc commandConfig) destination() (caddymodule.Backends, error) {
	flags := cc.s3.Bucket != "" || cc.s3.Endpoint != "" || cc.s3.Region != "" || cc.s3.Prefix != "" ||
		cc.s3.PathStyle || cc.partSize != "" || cc.storage != "" || cc.storageShared || cc.metadataDir != "" || cc.dsn != ""
	if cc.config != "" {
		if flags {
			return caddymodule.Backends{}, errors.New("--config names the destination: leave out the destination flags (--s3-*, --storage, --postgres, --metadata-dir), or --config")
		}
		return backendsFromConfig(cc.config, cc.adapter)
	}
	if cc.adapter != "" {
		return caddymodule.Backends{}, errors.New("--adapter goes with --config")
	}
	rg := caddymodule.Registry{Storage: cc.storage, StorageShared: cc.storageShared, MetadataPostgres: cc.dsn, MetadataDir: cc.metadataDir}
	switch {
	case cc.s3.Bucket != "":
		if cc.partSize != "" {
			n, err := humanize.ParseBytes(cc.partSize)
			if err != nil || n > 1<<40 {
				return caddymodule.Backends{}, fmt.Errorf("--s3-part-size %q: want a size such as 8MiB", cc.partSize)
			}
			cc.s3.PartSize = int64(n)
		}
		rg.StorageS3 = &caddymodule.S3Storage{Config: cc.s3}
	case cc.s3 != (s3.Config{}) || cc.partSize != "":
		return caddymodule.Backends{}, errors.New("--s3-bucket is required with the other --s3- flags")
	case cc.storage == "" && cc.dsn == "" && cc.metadataDir == "":
		return caddymodule.Backends{}, fmt.Errorf("no destination: give --config with the new server's config, or --s3-bucket (storage s3) or --storage with --storage-shared, and --postgres (or $%s) or --metadata-dir", EnvPostgres)
	case cc.storage == "" && !cc.storageShared:
		return caddymodule.Backends{}, errors.New("no destination for blobs: --s3-bucket (storage s3), or --storage <dir> --storage-shared")
	case cc.storage != "" && !cc.storageShared:
		return caddymodule.Backends{}, fmt.Errorf("--storage %s: a folder destination is one every replica mounts; say so with --storage-shared (storage <dir> { shared })", cc.storage)
	}
	b, err := rg.Backends()
	if err != nil {
		return caddymodule.Backends{}, fmt.Errorf("destination: %w", err)
	}
	return b, nil
}

// backendsFromConfig reads the storage and metadata settings of the
// oci_registry handlers of a config file. Handlers on the single-node
// setup are skipped (a site may keep one); those left must all name the
// same backends.
func backendsFromConfig(file, adapter string) (caddymodule.Backends, error) {
	raw, _, _, err := caddycmd.LoadConfig(file, adapter)
	if err != nil {
		return caddymodule.Backends{}, fmt.Errorf("--config %s: %w", file, err)
	}
	var doc any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return caddymodule.Backends{}, fmt.Errorf("--config %s: %w", file, err)
	}
	var handlers []map[string]any
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "oci_registry" {
				handlers = append(handlers, v)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	if len(handlers) == 0 {
		return caddymodule.Backends{}, fmt.Errorf("--config %s: no oci_registry handler", file)
	}
	var found []caddymodule.Backends
	var firstErr error
	for _, h := range handlers {
		js, _ := json.Marshal(h)
		var rg caddymodule.Registry
		if err := json.Unmarshal(js, &rg); err != nil {
			return caddymodule.Backends{}, fmt.Errorf("--config %s: oci_registry: %w", file, err)
		}
		b, err := rg.Backends()
		if err != nil {
			firstErr = cmp.Or(firstErr, err)
			continue
		}
		if !slices.ContainsFunc(found, func(o caddymodule.Backends) bool { return sameBackends(o, b) }) {
			found = append(found, b)
		}
	}
	switch len(found) {
	case 0:
		return caddymodule.Backends{}, fmt.Errorf("--config %s: oci_registry: %w", file, firstErr)
	case 1:
		return found[0], nil
	}
	var names []string
	for _, b := range found {
		names = append(names, describe(b))
	}
	return caddymodule.Backends{}, fmt.Errorf("--config %s: its oci_registry handlers use different storage (%s): migrate into one at a time, with a config that names it", file, strings.Join(names, "; "))
}

func sameBackends(a, b caddymodule.Backends) bool {
	return a.Folder == b.Folder && a.Postgres == b.Postgres && a.MetadataDir == b.MetadataDir &&
		(a.S3 == nil) == (b.S3 == nil) && (a.S3 == nil || *a.S3 == *b.S3)
}

// describe names the backends without their secrets.
func describe(b caddymodule.Backends) string {
	blobs := b.Folder
	if b.S3 != nil {
		blobs = fmt.Sprintf("s3://%s/%s", b.S3.Bucket, b.S3.Prefix)
		if b.S3.Endpoint != "" {
			blobs += " at " + b.S3.Endpoint
		}
	}
	meta := "PostgreSQL"
	if b.Postgres == "" {
		meta = "the embedded metadata in " + b.MetadataDir
	}
	return blobs + " and " + meta
}

// sameFolder reports whether a and b are one folder.
func sameFolder(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if err != nil {
		return false, fmt.Errorf("--from %s: %w", a, err)
	}
	fb, err := os.Stat(b)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("storage %s: %w", b, err)
	}
	return os.SameFile(fa, fb), nil
}

// Destination is the destination's store, opened for a migration.
type Destination struct {
	Target
	Describe string // where, without secrets
	close    []func()
}

// Close closes the store and its metadata.
func (d *Destination) Close() {
	for i := len(d.close) - 1; i >= 0; i-- {
		d.close[i]()
	}
	d.close = nil
}

// AppName is the application_name of the command's PostgreSQL
// connections: not a replica's (pgmeta.AppName), which it looks for.
const AppName = "caddy-oci migrate"

// OpenDestination opens the backends b for writing, refusing metadata a
// running server uses: the embedded database locks its folder, and in
// PostgreSQL a replica's connections show in pg_stat_activity.
func OpenDestination(ctx context.Context, b caddymodule.Backends) (_ *Destination, err error) {
	dst := &Destination{Describe: describe(b)}
	defer func() {
		if err != nil {
			dst.Close()
		}
	}()
	var blobs blobstore.Store
	if b.S3 != nil {
		if blobs, err = s3.New(ctx, *b.S3, nil); err != nil {
			return nil, fmt.Errorf("destination bucket: %w", err)
		}
	} else if blobs, err = fsblobs.New(fsblobs.Options{Dir: b.Folder}); err != nil {
		return nil, fmt.Errorf("destination storage %s: %w", b.Folder, err)
	}
	var meta interface {
		metastore.Store
		AuthDest
	}
	var leases coord.Leases
	if b.Postgres != "" {
		// Before Open, which applies the schema's migrations: a database
		// replicas serve from is left as it was.
		if err := notServed(ctx, func(ctx context.Context) (int, error) {
			return pgmeta.ReplicaConnectionsAt(ctx, b.Postgres, AppName)
		}); err != nil {
			return nil, err
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		db, err := pgmeta.Open(octx, pgmeta.Options{DSN: b.Postgres, ApplicationName: AppName})
		if err != nil {
			// pgx names host, user and database, never the password.
			return nil, fmt.Errorf("destination database: %w", err)
		}
		dst.close = append(dst.close, db.Close)
		meta, leases = db, db.Leases()
	} else {
		db, err := badgermeta.Open(b.MetadataDir)
		if err != nil {
			if strings.Contains(err.Error(), "directory lock") {
				return nil, fmt.Errorf("destination metadata_dir %s is in use: stop the server that uses it, then run again (%w)", b.MetadataDir, err)
			}
			return nil, fmt.Errorf("destination metadata_dir %s: %w", b.MetadataDir, err)
		}
		dst.close = append(dst.close, func() { _ = db.Close() })
		meta, leases = db, coord.NewLocal()
	}
	st, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: leases, Logger: zap.NewNop()})
	if err != nil {
		return nil, err
	}
	dst.close = append(dst.close, st.Close)
	dst.Target = Target{Store: st, Meta: meta, Auth: meta}
	return dst, nil
}

// notServed refuses a database replicas serve from. A replica that just
// stopped may show for a moment, while PostgreSQL ends its connections.
func notServed(ctx context.Context, replicas func(context.Context) (int, error)) error {
	for try := 0; ; try++ {
		n, err := replicas(ctx)
		if err != nil {
			return fmt.Errorf("destination database: %w", err)
		}
		if n == 0 {
			return nil
		}
		if try == 5 {
			return fmt.Errorf("destination database is in use: %d connections of caddy-oci replicas (application_name %s in pg_stat_activity); stop them, then run again", n, pgmeta.AppName)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(400 * time.Millisecond):
		}
	}
}

// OpenSource opens the storage folder dir (with its metadata in metaDir,
// if not empty) for reading. A folder that is not a registry's is refused
// rather than made one, and one a running server holds is named as such.
func OpenSource(dir, metaDir string) (*cache.Store, error) {
	meta := cache.Options{Dir: dir, MetadataDir: metaDir}.DatabaseDir()
	for _, p := range []string{filepath.Join(dir, "blobs"), meta} {
		if fi, err := os.Stat(p); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("--from %s: not a registry's storage folder (no %s)", dir, p)
		}
	}
	// No GC loop, no eviction: the store is only read. Its upload
	// sessions are left as they are.
	st, err := cache.Open(cache.Options{Dir: dir, MetadataDir: metaDir, GCGrace: 365 * 24 * time.Hour})
	if err != nil {
		if strings.Contains(err.Error(), "directory lock") {
			return nil, fmt.Errorf("--from %s: the folder is in use: stop the server that uses it, then run again (%w)", dir, err)
		}
		return nil, fmt.Errorf("--from %s: %w", dir, err)
	}
	return st, nil
}
