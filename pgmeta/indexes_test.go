package pgmeta

import (
	"context"
	"testing"
)

// TestRequestPathQueriesUseIndexes: each query a request makes reads a
// few pages of a database of tens of thousands of rows, so it is served
// by an index of migrations/0002_metadata.sql rather than by reading a
// table (or an index) whole. Pages, not plans, are counted: a plan can
// name an index and still walk all of it.
func TestRequestPathQueriesUseIndexes(t *testing.T) {
	s := openStore(t)
	ctx := context.Background()
	// 1,000 repositories; 50,000 blobs and links; 20,000 manifests (one
	// in ten a referrer of one of 2,000 subjects), each with two
	// references and a tag; 10,000 upload sessions of 1,000 owners.
	seed := []string{
		`INSERT INTO repositories SELECT 'r' || i, now() FROM generate_series(0, 999) i`,
		`INSERT INTO blobs SELECT 'b' || i, i, now(), now() FROM generate_series(0, 49999) i`,
		`INSERT INTO blob_links SELECT 'r' || (i % 1000), 'b' || i, now() FROM generate_series(0, 49999) i`,
		`INSERT INTO manifests SELECT 'r' || (i % 1000), 'm' || i, 'application/json', 2, '{}',
			CASE WHEN i % 10 = 0 THEN 's' || (i % 2000) END, '', NULL FROM generate_series(0, 19999) i`,
		`INSERT INTO manifest_refs SELECT 'r' || (i % 1000), 'm' || i, 'b' || i FROM generate_series(0, 19999) i`,
		`INSERT INTO manifest_refs SELECT 'r' || (i % 1000), 'm' || i, 'b' || (i + 20000) FROM generate_series(0, 19999) i`,
		`INSERT INTO tags SELECT 'r' || (i % 1000), 't' || i, 'm' || i, NULL FROM generate_series(0, 19999) i`,
		`INSERT INTO uploads SELECT 'u' || i, 'r' || (i % 1000), 'o' || (i % 1000), '', i, 1, now(), now()
			FROM generate_series(0, 9999) i`,
		`ANALYZE`,
	}
	for _, q := range seed {
		if _, err := s.pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// A scan of any of these tables whole reads hundreds of pages.
	const maxPages = 24
	for name, q := range map[string]string{
		"catalog":      "SELECT name FROM repositories WHERE name > 'r5' ORDER BY name LIMIT 100",
		"tags list":    "SELECT tag FROM tags WHERE repo = 'r7' AND tag > '' ORDER BY tag LIMIT 100",
		"tag":          "SELECT digest, fetched FROM tags WHERE repo = 'r7' AND tag = 't7'",
		"manifest":     "SELECT body, ARRAY(SELECT ref FROM manifest_refs WHERE repo = 'r7' AND manifest = 'm7') FROM manifests WHERE repo = 'r7' AND digest = 'm7'",
		"referrers":    "SELECT digest FROM manifests WHERE repo = 'r10' AND subject = 's10' ORDER BY digest",
		"mount":        "SELECT repo FROM blob_links WHERE digest = 'b77' ORDER BY repo LIMIT 3",
		"blob HEAD":    "SELECT l.linked, b.size FROM blob_links l JOIN blobs b ON b.digest = l.digest WHERE l.repo = 'r77' AND l.digest = 'b77' AND b.deleting IS NULL",
		"upload":       "SELECT state FROM uploads WHERE id = 'u77'",
		"upload usage": "SELECT (SELECT count(*) FROM uploads WHERE repo = 'r7'), (SELECT coalesce(sum(size), 0) FROM uploads WHERE owner = 'o7' AND owner <> '')",
		// The cascade of a manifest delete, and a blob forgotten's
		// foreign-key check.
		"tags by digest":  "SELECT tag FROM tags WHERE repo = 'r7' AND digest = 'm7'",
		"links of a blob": "SELECT 1 FROM blob_links WHERE digest = 'b77'",
		"gc: referenced":  "SELECT 1 FROM manifest_refs WHERE repo = 'r7' AND ref = 'b7'",
	} {
		var plan []map[string]any
		if err := s.pool.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+q).Scan(&plan); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		top := plan[0]["Plan"].(map[string]any)
		pages := top["Shared Hit Blocks"].(float64) + top["Shared Read Blocks"].(float64)
		if pages > maxPages {
			t.Errorf("%s read %v pages, more than %d: a scan of a whole table or index?\n%s", name, pages, maxPages, q)
		}
	}
}
