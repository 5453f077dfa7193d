package zotadapter

// Reading zot's config: zot loads it with viper, which matches keys
// without regard to case ("rootDirectory", "rootdirectory") and decodes
// durations from strings ("1h") or nanoseconds. object does the same, and
// remembers which keys were read, so that every key nobody read becomes a
// warning instead of being dropped.

import (
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// object is one JSON object of the zot config at a key path.
type object struct {
	path string            // key path for messages: "http.auth"; "" at the top
	vals map[string]any    // by lower-cased key
	keys map[string]string // lower-cased key -> as written
	read map[string]bool
	a    *adapter
}

func (a *adapter) object(path string, v any) (*object, error) {
	m, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%s: must be a JSON object, not %s", path, kind(v))
	}
	o := &object{path: path, vals: map[string]any{}, keys: map[string]string{}, read: map[string]bool{}, a: a}
	for k, val := range m {
		lk := strings.ToLower(k)
		if prev, dup := o.keys[lk]; dup {
			return nil, fmt.Errorf("%s: %q and %q are the same key to zot", path, prev, k)
		}
		o.vals[lk], o.keys[lk] = val, k
	}
	return o, nil
}

// at is the key path of key in o.
func (o *object) at(key string) string {
	if o.path == "" {
		return key
	}
	return o.path + "." + key
}

// has reports whether key is set (to anything but null).
func (o *object) has(key string) bool {
	v, ok := o.vals[strings.ToLower(key)]
	return ok && v != nil
}

// get returns key's value and marks it read.
func (o *object) get(key string) (any, bool) {
	lk := strings.ToLower(key)
	o.read[lk] = true
	v, ok := o.vals[lk]
	return v, ok && v != nil
}

func (o *object) str(key string) (string, error) {
	v, ok := o.get(key)
	if !ok {
		return "", nil
	}
	s, isStr := v.(string)
	if !isStr {
		return "", fmt.Errorf("%s: must be a string, not %s", o.at(key), kind(v))
	}
	return s, nil
}

func (o *object) boolean(key string, def bool) (bool, error) {
	v, ok := o.get(key)
	if !ok {
		return def, nil
	}
	b, isBool := v.(bool)
	if !isBool {
		return false, fmt.Errorf("%s: must be true or false, not %s", o.at(key), kind(v))
	}
	return b, nil
}

func (o *object) integer(key string) (int64, bool, error) {
	v, ok := o.get(key)
	if !ok {
		return 0, false, nil
	}
	n, isNum := v.(json.Number)
	if !isNum {
		return 0, false, fmt.Errorf("%s: must be a whole number, not %s", o.at(key), kind(v))
	}
	i, err := n.Int64()
	if err != nil {
		return 0, false, fmt.Errorf("%s: must be a whole number, not %s", o.at(key), n)
	}
	return i, true, nil
}

// duration reads a Go duration string ("90m") or nanoseconds, as zot does.
func (o *object) duration(key string) (time.Duration, bool, error) {
	v, ok := o.get(key)
	if !ok {
		return 0, false, nil
	}
	switch d := v.(type) {
	case string:
		dur, err := time.ParseDuration(d)
		if err != nil {
			return 0, false, fmt.Errorf("%s: %q is not a duration such as 1h30m", o.at(key), d)
		}
		return dur, true, nil
	case json.Number:
		n, err := d.Int64()
		if err != nil {
			return 0, false, fmt.Errorf("%s: %s is not a duration in nanoseconds", o.at(key), d)
		}
		return time.Duration(n), true, nil
	}
	return 0, false, fmt.Errorf("%s: must be a duration such as \"1h\", not %s", o.at(key), kind(v))
}

func (o *object) strings(key string) ([]string, error) {
	v, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	list, isList := v.([]any)
	if !isList {
		return nil, fmt.Errorf("%s: must be a list of strings, not %s", o.at(key), kind(v))
	}
	out := make([]string, 0, len(list))
	for i, e := range list {
		s, isStr := e.(string)
		if !isStr {
			return nil, fmt.Errorf("%s[%d]: must be a string, not %s", o.at(key), i, kind(e))
		}
		out = append(out, s)
	}
	return out, nil
}

// sub returns the object at key, or nil when key is not set.
func (o *object) sub(key string) (*object, error) {
	v, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	return o.a.object(o.at(key), v)
}

// list returns the objects of the list at key.
func (o *object) list(key string) ([]*object, error) {
	v, ok := o.get(key)
	if !ok {
		return nil, nil
	}
	l, isList := v.([]any)
	if !isList {
		return nil, fmt.Errorf("%s: must be a list, not %s", o.at(key), kind(v))
	}
	out := make([]*object, 0, len(l))
	for i, e := range l {
		sub, err := o.a.object(fmt.Sprintf("%s[%d]", o.at(key), i), e)
		if err != nil {
			return nil, err
		}
		out = append(out, sub)
	}
	return out, nil
}

// entries returns the object at key as a map whose keys are names the
// operator chose (repository patterns, group names), kept as written, in
// sorted order.
func (o *object) entries(key string) ([]string, map[string]any, error) {
	v, ok := o.get(key)
	if !ok {
		return nil, nil, nil
	}
	m, isMap := v.(map[string]any)
	if !isMap {
		return nil, nil, fmt.Errorf("%s: must be a JSON object, not %s", o.at(key), kind(v))
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	return names, m, nil
}

// unsupported marks key read and, when it is set, warns that it has no
// counterpart here for reason.
func (o *object) unsupported(key, reason string) {
	if v, ok := o.get(key); ok && !isEmpty(v) {
		o.a.warn(o.at(key), reason)
	}
}

// ignore marks keys read that carry nothing to map (zot's build
// information, which zot itself writes into configs it prints).
func (o *object) ignore(keys ...string) {
	for _, k := range keys {
		o.get(k)
	}
}

// rest warns about every key of o that nothing read: zot does not know
// it either (a typo, or a setting of another zot version).
func (o *object) rest() {
	var left []string
	for lk := range o.vals {
		if !o.read[lk] {
			left = append(left, o.keys[lk])
		}
	}
	sort.Strings(left)
	for _, k := range left {
		o.a.warn(o.at(k), "not a zot setting this adapter knows; ignored")
	}
}

func isEmpty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	case bool:
		return !x
	}
	return false
}

func kind(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case string:
		return strconv.Quote(x)
	case bool:
		return strconv.FormatBool(x)
	case json.Number:
		return "the number " + x.String()
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return fmt.Sprintf("%T", v)
}
