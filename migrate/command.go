package migrate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/caddy-oci/caddy-oci/cache"
	"github.com/caddy-oci/caddy-oci/cache/blobstore/s3"
	"github.com/caddy-oci/caddy-oci/cache/composite"
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
		Long:  "Tools of the caddy-oci registry. `caddy oci migrate --help` describes the migration of a storage folder to S3 and PostgreSQL.",
		CobraFunc: func(c *cobra.Command) {
			c.AddCommand(NewCommand())
		},
	})
}

// commandConfig is what the flags and the environment say.
type commandConfig struct {
	from, fromMeta string
	s3             s3.Config
	partSize       string
	dsn            string
	verify         bool
	jobs           int
}

// NewCommand is `caddy oci migrate`.
func NewCommand() *cobra.Command {
	var cc commandConfig
	c := &cobra.Command{
		Use:   "migrate --from <storage folder> --s3-bucket <bucket> [--s3-endpoint <url>] [...]",
		Short: "Copy a storage folder into an S3 bucket and PostgreSQL",
		Long: `Copies what a single-node registry's storage folder holds (blobs, blob
links, manifests, tags, referrers, mirror tag fetch times, API keys, sign-in
sessions and their key) into the backends of "storage s3 { }" and
"metadata postgres <dsn>", checking every blob's digest as it goes and,
unless --verify=false, re-reading everything from the destination at the end.

Stop the server that uses the folder first (the metadata database locks it).
Upload sessions in progress are not copied: let them finish or expire.
Running it again copies only what is missing, so an interrupted run is
finished by running it again.

Secrets come from the environment, never from flags:
  S3_ACCESS_KEY, S3_SECRET_KEY  (unset: the AWS environment's credentials)
  DATABASE_URL                  the PostgreSQL DSN, unless --postgres is given

It exits with status 1 if anything was not copied or differs, naming it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc.s3.AccessKey = os.Getenv(EnvS3AccessKey)
			cc.s3.SecretKey = os.Getenv(EnvS3SecretKey)
			if cc.dsn == "" {
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
	f.StringVar(&cc.s3.Bucket, "s3-bucket", "", "bucket (storage s3: bucket); it must exist")
	f.StringVar(&cc.s3.Endpoint, "s3-endpoint", "", "S3 server URL (storage s3: endpoint); omit for AWS")
	f.StringVar(&cc.s3.Region, "s3-region", "", "region (storage s3: region)")
	f.StringVar(&cc.s3.Prefix, "s3-prefix", "", "key prefix (storage s3: prefix)")
	f.BoolVar(&cc.s3.PathStyle, "s3-path-style", false, "path-style addressing (storage s3: path_style)")
	f.StringVar(&cc.partSize, "s3-part-size", "", "upload part size such as 8MiB (storage s3: part_size)")
	f.StringVar(&cc.dsn, "postgres", "", "PostgreSQL DSN (metadata postgres); default $DATABASE_URL, which keeps a password out of the process list")
	f.IntVar(&cc.jobs, "jobs", 4, "blobs copied at once")
	f.BoolVar(&cc.verify, "verify", true, "re-read every blob from the bucket and compare manifests and tags at the end")
	return c
}

func runCommand(ctx context.Context, cc commandConfig, out io.Writer) error {
	if cc.from == "" {
		return errors.New("--from: the storage folder to copy is required")
	}
	if cc.s3.Bucket == "" {
		return errors.New("--s3-bucket is required")
	}
	if cc.dsn == "" {
		return fmt.Errorf("no PostgreSQL: set %s (or --postgres)", EnvPostgres)
	}
	if cc.jobs < 1 || cc.jobs > 64 {
		return fmt.Errorf("--jobs %d: want 1 to 64", cc.jobs)
	}
	if cc.partSize != "" {
		n, err := humanize.ParseBytes(cc.partSize)
		if err != nil || n > 1<<40 {
			return fmt.Errorf("--s3-part-size %q: want a size such as 8MiB", cc.partSize)
		}
		cc.s3.PartSize = int64(n)
	}
	src, err := OpenSource(cc.from, cc.fromMeta)
	if err != nil {
		return err
	}
	defer src.Close()

	blobs, err := s3.New(ctx, cc.s3, nil)
	if err != nil {
		return fmt.Errorf("destination bucket: %w", err)
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	meta, err := pgmeta.Open(octx, pgmeta.Options{DSN: cc.dsn})
	if err != nil {
		// pgx names host, user and database, never the password.
		return fmt.Errorf("destination database: %w", err)
	}
	defer meta.Close()
	dst, err := composite.New(composite.Options{Blobs: blobs, Meta: meta, Leases: meta.Leases(), Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer dst.Close()

	fmt.Fprintf(out, "migrating %s to s3://%s/%s and PostgreSQL\n", cc.from, cc.s3.Bucket, cc.s3.Prefix)
	sum, err := Run(ctx, src, dst, meta, Options{
		Verify:   cc.verify,
		Jobs:     cc.jobs,
		Progress: func(line string) { fmt.Fprintln(out, line) },
	})
	fmt.Fprintln(out, sum)
	return err
}

// OpenSource opens the storage folder dir (with its metadata in metaDir,
// if not empty) for reading. A folder that is not a registry's is refused
// rather than made one, and one a running server holds is named as such.
func OpenSource(dir, metaDir string) (*cache.Store, error) {
	meta := metaDir
	if meta == "" {
		meta = filepath.Join(dir, "meta")
	}
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
