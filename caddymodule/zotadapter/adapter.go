// Package zotadapter is a Caddy config adapter named "zot": it reads a
// zot registry's config.json and produces the Caddy JSON config that a
// Caddyfile with oci_registry would, so that
//
//	caddy run --config /etc/zot/config.json --adapter zot
//
// serves what zot served. Everything it cannot carry over exactly is a
// warning naming the zot key; a value of the wrong type is an error.
package zotadapter

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
	"github.com/caddyserver/caddy/v2/modules/logging"

	"github.com/caddy-oci/caddy-oci/caddymodule"
)

func init() {
	caddyconfig.RegisterAdapter("zot", Adapter{})
}

// Adapter adapts a zot config (JSON) to Caddy JSON.
type Adapter struct{}

// adapter is one run of Adapt.
type adapter struct {
	file     string
	warnings []caddyconfig.Warning

	reg    *caddymodule.Registry
	server *caddyhttp.Server
	tlsApp *caddytls.TLS
	logs   *caddy.Logging
	// routes that go before the registry's (the metrics endpoint open to
	// all), and after it (the metrics endpoint behind a guard of the
	// registry, which passes requests on to it).
	before, after []caddyhttp.Route
	// http.externalUrl, for OpenID's callback.
	externalURL string
	// http.accessControl.metrics, read before extensions.metrics.
	hasAccessControl bool
	apiKeys          bool
	metricsUsers     []string
	metricsAnon      bool
	hasMetricsAC     bool
	// http.auth.ldap is mapped; with userGroupAttribute (ldapGroups),
	// policies may name groups only the directory defines.
	ldapOn, ldapGroups bool
	// http.tls.cacert, and the client_certificates user attribute its
	// certificates are named by ("" when zot's attribute has none here).
	clientCA, certUser string
}

func (a *adapter) warn(key, msg string) {
	a.warnings = append(a.warnings, caddyconfig.Warning{File: a.file, Directive: key, Message: msg})
}

// Adapt turns the zot config body into Caddy JSON.
func (Adapter) Adapt(body []byte, options map[string]any) ([]byte, []caddyconfig.Warning, error) {
	a := &adapter{certUser: "cn"} // zot's default identity attribute: CommonName
	if f, ok := options["filename"].(string); ok {
		a.file = f
	}
	cfg, err := a.adapt(body)
	if err != nil {
		return nil, a.warnings, err
	}
	out, err := json.Marshal(cfg)
	return out, a.warnings, err
}

func (a *adapter) adapt(body []byte) (*caddy.Config, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var raw any
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("zot config: %w (only zot's JSON form is read; convert a YAML config to JSON first)", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("zot config: more than one JSON value")
	}
	top, err := a.object("", raw)
	if err != nil {
		return nil, fmt.Errorf("zot config: %w", err)
	}
	// Build information that zot writes into the configs it prints.
	top.ignore("distSpecVersion", "goVersion", "commit", "releaseTag", "binaryType")

	a.reg = &caddymodule.Registry{}
	a.server = &caddyhttp.Server{AutoHTTPS: &caddyhttp.AutoHTTPSConfig{Disabled: true}}

	steps := []struct {
		key string
		fn  func(*object) error
	}{
		{"storage", a.storage},
		{"http", a.http},
		{"extensions", a.extensions},
		{"log", a.log},
	}
	for _, s := range steps {
		o, err := top.sub(s.key)
		if err != nil {
			return nil, err
		}
		if o == nil {
			o, _ = a.object(s.key, map[string]any{})
		}
		if err := s.fn(o); err != nil {
			return nil, err
		}
		o.rest()
	}
	top.unsupported("scheduler", "Caddy schedules its own work; not used")
	top.unsupported("cluster", "a zot cluster (requests spread over members by repository) has no counterpart; this serves as one node")
	top.rest()

	if err := a.finishAuth(); err != nil {
		return nil, err
	}
	a.mirrorPatterns()

	handler := caddyconfig.JSONModuleObject(a.reg, "handler", "oci_registry", &a.warnings)
	a.server.Routes = append(append(a.before, caddyhttp.Route{HandlersRaw: []json.RawMessage{handler}}), a.after...)
	apps := map[string]json.RawMessage{
		"http": caddyconfig.JSON(caddyhttp.App{Servers: map[string]*caddyhttp.Server{"zot": a.server}}, &a.warnings),
	}
	if a.tlsApp != nil {
		apps["tls"] = caddyconfig.JSON(a.tlsApp, &a.warnings)
	}
	return &caddy.Config{Logging: a.logs, AppsRaw: apps}, nil
}

// storage maps zot's storage section (the defaults of zot apply when a
// key is missing: gc on, dedupe on), and its subPaths.
func (a *adapter) storage(o *object) error {
	set, err := a.storeSettings(o)
	if err != nil {
		return err
	}
	a.reg.Storage, a.reg.GCInterval, a.reg.GCGrace = set.Storage, set.GCInterval, set.GCGrace
	if sd, err := o.sub("storageDriver"); err != nil {
		return err
	} else if sd != nil {
		remoteCache, err := o.boolean("remoteCache", false)
		if err != nil {
			return err
		}
		if err := a.storageDriver(sd, set.Storage, remoteCache); err != nil {
			return err
		}
	}
	switch {
	case a.reg.StorageS3 != nil:
		a.reg.Storage = "" // zot keeps its local metadata there; blobs and metadata live elsewhere here
	case a.reg.Storage == "":
		a.warn("storage.rootDirectory", "not set (zot refuses to start without it); the registry uses Caddy's data folder")
	}
	metaStore := "the metadata store"
	if a.reg.MetadataPostgres != "" {
		metaStore = "the PostgreSQL metadata (metadata_postgres)"
	}
	o.unsupported("cacheDriver", "not used: the dedupe index, and what zot keeps in DynamoDB or Redis, is part of "+metaStore+" here")
	o.unsupported("remoteCache", "not used: the dedupe index is part of "+metaStore+" here")
	o.unsupported("maxRepos", "no limit on the number of repositories here")
	o.unsupported("fastRestart", "not needed: startup does not walk the storage here")
	if a.reg.StorageS3 != nil {
		o.unsupported("subPaths", "not supported with storageDriver s3: the bucket holds every repository")
		return nil
	}
	return a.subPaths(o)
}

// subPaths maps storage.subPaths: each route ("/team") becomes a
// sub_storage of that prefix with its own folder and GC settings.
func (a *adapter) subPaths(o *object) error {
	routes, m, err := o.entries("subPaths")
	if err != nil {
		return err
	}
	for _, route := range routes {
		so, err := a.object(o.at("subPaths")+"."+route, m[route])
		if err != nil {
			return err
		}
		set, err := a.storeSettings(so)
		if err != nil {
			return err
		}
		so.unsupported("storageDriver", "not supported in a sub-path: a sub-path is a folder of its own")
		prefix := strings.Trim(route, "/")
		switch {
		case prefix == "":
			a.warn(so.path, "the route / is the whole registry, which rootDirectory holds; ignored")
		case set.Storage == "":
			return fmt.Errorf("%s.rootDirectory: required (zot refuses a sub-path without it)", so.path)
		default:
			a.reg.SubStorages = append(a.reg.SubStorages, &caddymodule.SubStorage{Prefix: prefix, StorageSettings: set})
		}
		so.rest()
	}
	return nil
}

// storeSettings maps what storage and each of its subPaths have alike:
// the folder, GC, and the settings that have no counterpart.
func (a *adapter) storeSettings(o *object) (caddymodule.StorageSettings, error) {
	var set caddymodule.StorageSettings
	var err error
	if set.Storage, err = o.str("rootDirectory"); err != nil {
		return set, err
	}
	dedupe, err := o.boolean("dedupe", true)
	if err != nil {
		return set, err
	}
	if !dedupe {
		a.warn(o.at("dedupe"), "note: content is always stored once per digest here (dedupe is always on); false has no effect")
	}
	commit, err := o.boolean("commit", false)
	if err != nil {
		return set, err
	}
	if !commit && o.has("commit") {
		a.warn(o.at("commit"), "note: every write is synced to disk before it is acknowledged here; false has no effect")
	}
	gc, err := o.boolean("gc", true)
	if err != nil {
		return set, err
	}
	delay, hasDelay, err := o.duration("gcDelay")
	if err != nil {
		return set, err
	}
	interval, hasInterval, err := o.duration("gcInterval")
	if err != nil {
		return set, err
	}
	switch {
	case !gc:
		set.GCInterval = caddy.Duration(-1)
	case hasInterval && interval > 0:
		set.GCInterval = caddy.Duration(interval)
	}
	if hasDelay && delay > 0 {
		set.GCGrace = caddy.Duration(delay)
	}
	o.unsupported("gcTimeWindow", "garbage collection runs at any time of day here; the window is not kept")
	o.unsupported("retention", "retention policies (keep tags by pattern, pull or push time) are not supported; only unreferenced content is collected")
	o.unsupported("redirectBlobURL", "not supported: blobs are always served by the registry itself")
	return set, nil
}

// http maps listen address, TLS, auth and access control.
func (a *adapter) http(o *object) error {
	addr, err := o.str("address")
	if err != nil {
		return err
	}
	if addr == "" {
		addr = "127.0.0.1" // zot's default
	}
	port := "8080"
	if v, ok := o.get("port"); ok {
		switch p := v.(type) {
		case string:
			port = p
		case json.Number:
			port = p.String()
		default:
			return fmt.Errorf("http.port: must be a port number, not %s", kind(v))
		}
	}
	a.server.Listen = []string{net.JoinHostPort(addr, port)}

	for _, t := range []struct {
		key string
		set *caddy.Duration
	}{{"readTimeout", &a.server.ReadTimeout}, {"writeTimeout", &a.server.WriteTimeout}} {
		d, ok, err := o.duration(t.key)
		if err != nil {
			return err
		}
		if ok {
			if d <= 0 {
				d = 0 // zot: no timeout; Caddy: 0 is none
			}
			*t.set = caddy.Duration(d)
		}
	}

	tls, err := o.sub("tls")
	if err != nil {
		return err
	}
	if tls != nil {
		if err := a.tls(tls, o); err != nil {
			return err
		}
		tls.rest()
	}

	a.externalURL, err = o.str("externalUrl")
	if err != nil {
		return err
	}
	realm, err := o.str("realm")
	if err != nil {
		return err
	}
	if err := a.auth(o, realm); err != nil {
		return err
	}
	// zot 1.x's read-only switch (removed in zot 2): no writes at all.
	if ro, err := o.boolean("readOnly", false); err != nil {
		return err
	} else if ro {
		a.reg.ReadOnly = true
		a.warn("http.readOnly", "a zot 1.x setting: pushes and deletes are refused with 403 DENIED here (zot 1.x answered 405)")
	}
	o.unsupported("allowOrigin", "CORS headers are not added; put a Caddy header directive in front if a browser UI needs them")
	o.unsupported("ratelimit", "not mapped; Caddy has rate-limit plugins, and upload limits apply on their own (max_uploads_per_client)")
	o.unsupported("compat", "not supported: Docker schema 2 media types are always accepted and never converted")
	return nil
}

// tls loads the certificate and key, and with cacert asks clients for
// certificates as zot does: required when nothing else can sign a
// client in, else verified when given (and then signing the client in,
// see finishAuth).
func (a *adapter) tls(t *object, httpObj *object) error {
	cert, err := t.str("cert")
	if err != nil {
		return err
	}
	key, err := t.str("key")
	if err != nil {
		return err
	}
	if cert == "" || key == "" {
		return fmt.Errorf("http.tls: needs both cert and key")
	}
	a.tlsApp = &caddytls.TLS{CertificatesRaw: caddy.ModuleMap{
		"load_files": caddyconfig.JSON([]caddytls.CertKeyFilePair{{Certificate: cert, Key: key, Tags: []string{"zot"}}}, &a.warnings),
	}}
	policy := &caddytls.ConnectionPolicy{
		CertSelection: &caddytls.CustomCertSelectionPolicy{AnyTag: []string{"zot"}},
	}
	ca, err := t.str("cacert")
	if err != nil {
		return err
	}
	if ca != "" {
		mode := "verify_if_given"
		if !httpObj.has("auth") && !httpObj.has("accessControl") {
			mode = "require_and_verify"
		}
		policy.ClientAuthentication = &caddytls.ClientAuthentication{
			CARaw: caddyconfig.JSONModuleObject(caddytls.FileCAPool{TrustedCACertPEMFiles: []string{ca}}, "provider", "file", &a.warnings),
			Mode:  mode,
		}
		a.clientCA = ca
		// Caddy would answer 421 when Host differs from the TLS server
		// name, which keeps a client from reaching a site whose policy
		// asks for certificates through one that does not. Here one
		// policy serves every connection, and clients that dial an IP
		// address send no server name at all.
		strict := false
		a.server.StrictSNIHost = &strict
	}
	a.server.TLSConnPolicies = caddytls.ConnectionPolicies{policy}
	return nil
}

// log maps zot's level, output file and audit file onto Caddy's logs.
// The registry's audit events are on the logger named "audit".
func (a *adapter) log(o *object) error {
	level, err := o.str("level")
	if err != nil {
		return err
	}
	output, err := o.str("output")
	if err != nil {
		return err
	}
	audit, err := o.str("audit")
	if err != nil {
		return err
	}
	if level == "" && output == "" && audit == "" {
		return nil
	}
	def := &caddy.CustomLog{}
	switch l := strings.ToLower(level); l {
	case "":
	case "debug", "info", "warn", "error", "panic", "fatal":
		def.Level = strings.ToUpper(l)
	case "warning":
		def.Level = "WARN"
	default:
		return fmt.Errorf("log.level: unknown level %q (debug, info, warn, error, panic, fatal)", level)
	}
	if output != "" {
		def.WriterRaw = writer(output, &a.warnings)
	}
	a.logs = &caddy.Logging{Logs: map[string]*caddy.CustomLog{"default": def}}
	if audit != "" {
		def.Exclude = []string{"audit"}
		a.logs.Logs["audit"] = &caddy.CustomLog{
			BaseLog: caddy.BaseLog{WriterRaw: writer(audit, &a.warnings)},
			Include: []string{"audit"},
		}
	}
	return nil
}

// writer is a Caddy log writer for a zot log destination: a file path,
// or stdout/stderr.
func writer(dest string, warnings *[]caddyconfig.Warning) json.RawMessage {
	switch dest {
	case "stdout", "/dev/stdout":
		return caddyconfig.JSONModuleObject(caddy.StdoutWriter{}, "output", "stdout", warnings)
	case "stderr", "/dev/stderr":
		return caddyconfig.JSONModuleObject(caddy.StderrWriter{}, "output", "stderr", warnings)
	}
	return caddyconfig.JSONModuleObject(logging.FileWriter{Filename: dest}, "output", "file", warnings)
}
