package pageout

import "testing"

func TestParseMapsLine(t *testing.T) {
	for _, c := range []struct {
		line string
		want Mapping
		ok   bool
	}{
		{"7f0000001000-7f0000003000 r--s 00000000 fd:01 1234                       /s/meta/000001.sst", Mapping{0x7f0000001000, 0x7f0000003000, "/s/meta/000001.sst"}, true},
		{"7f0000001000-7f0000003000 r--s 00000000 fd:01 1234   /a dir/meta/000002.sst", Mapping{0x7f0000001000, 0x7f0000003000, "/a dir/meta/000002.sst"}, true},
		{"7f0000001000-7f0000003000 rw-p 00000000 00:00 0 ", Mapping{}, false},
		{"7f0000003000-7f0000001000 r--s 00000000 fd:01 1 /x.sst", Mapping{}, false},
		{"zz-7f0000001000 r--s 00000000 fd:01 1 /x.sst", Mapping{}, false},
		{"Rss:                   4 kB", Mapping{}, false},
	} {
		m, ok := ParseMapsLine(c.line)
		if m != c.want || ok != c.ok {
			t.Errorf("ParseMapsLine(%q) = %+v, %v; want %+v, %v", c.line, m, ok, c.want, c.ok)
		}
	}
}
