package cache

import (
	"encoding/binary"
	"fmt"
	"strings"
	"time"
)

// Metadata keys. A NUL byte separates a repository name from what follows
// so that a prefix scan of one repository ("tag/a\x00") never matches
// another ("tag/a/b\x00", "tag/a-b\x00"); names and tags never hold NUL.
//
//	repo/<repo>                          repository exists
//	bl/<repo>\x00<digest>                repo links blob -> when linked or last
//	                                        asked for (unix ns, 8 bytes BE; empty
//	                                        in stores from before links had a time)
//	rb/<digest>\x00<repo>                the same link, by digest (mount, GC)
//	ml/<repo>\x00<digest>                repo links manifest -> manifestRecord JSON
//	rm/<digest>\x00<repo>                the same link, by digest (GC)
//	tag/<repo>\x00<tag>                  -> digest string
//	ref/<repo>\x00<subject>\x00<digest>  manifest digest refers to subject
//	up/<id>                              -> uploadRecord JSON
//	tf/<repo>\x00<tag>                   -> when a mirrored tag was last
//	                                        confirmed upstream (unix ns, 8 bytes BE)
//	bs/<digest>                          -> the blob's length when installed
//	                                        (8 bytes BE; none for blobs installed
//	                                        before lengths were recorded)
const (
	pRepo     = "repo/"
	pBlobLink = "bl/"
	pBlobRev  = "rb/"
	pManLink  = "ml/"
	pManRev   = "rm/"
	pTag      = "tag/"
	pRef      = "ref/"
	pUpload   = "up/"
	pTagFetch = "tf/"
	pBlobSize = "bs/"
	sep       = "\x00"
)

func repoKey(repo string) []byte { return []byte(pRepo + repo) }

func blobLinkKey(repo string, d Digest) []byte {
	return []byte(pBlobLink + repo + sep + d.String())
}

func blobLinkPrefix(repo string) []byte { return []byte(pBlobLink + repo + sep) }

func blobRevKey(d Digest, repo string) []byte {
	return []byte(pBlobRev + d.String() + sep + repo)
}

func blobRevPrefix(d Digest) []byte { return []byte(pBlobRev + d.String() + sep) }

func manLinkKey(repo string, d Digest) []byte {
	return []byte(pManLink + repo + sep + d.String())
}

func manLinkPrefix(repo string) []byte { return []byte(pManLink + repo + sep) }

func manRevKey(d Digest, repo string) []byte {
	return []byte(pManRev + d.String() + sep + repo)
}

func manRevPrefix(d Digest) []byte { return []byte(pManRev + d.String() + sep) }

func tagKey(repo, tag string) []byte { return []byte(pTag + repo + sep + tag) }

func tagPrefix(repo string) []byte { return []byte(pTag + repo + sep) }

func refKey(repo string, subject, d Digest) []byte {
	return []byte(pRef + repo + sep + subject.String() + sep + d.String())
}

func refPrefix(repo string, subject Digest) []byte {
	return []byte(pRef + repo + sep + subject.String() + sep)
}

func tagFetchKey(repo, tag string) []byte { return []byte(pTagFetch + repo + sep + tag) }

func uploadKey(id string) []byte { return []byte(pUpload + id) }

func blobSizeKey(d Digest) []byte { return []byte(pBlobSize + d.String()) }

// linkTime is the value of a bl/ key.
func linkTime(t time.Time) []byte { return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano())) }

// parseLinkTime reads a bl/ value; false for a link written before links
// had a time (GC stamps those when it first sees them unreferenced).
func parseLinkTime(v []byte) (time.Time, bool) {
	if len(v) != 8 {
		return time.Time{}, false
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
}

// checkName rejects what cannot be part of a key. The spec's grammar is the
// registry's business; this only keeps keys unambiguous.
func checkName(kind, name string) error {
	if name == "" || strings.Contains(name, sep) {
		return fmt.Errorf("%w: %s %q", ErrNameInvalid, kind, name)
	}
	return nil
}
