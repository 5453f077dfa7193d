// Package slapdtest runs a real OpenLDAP server for tests: Debian's slapd
// package, configured by a generated slapd.conf in a temporary folder
// (mdb backend, the memberof overlay), listening on 127.0.0.1 with
// ldap:// (StartTLS offered) and ldaps://, with a certificate from a test
// CA made for the run. It holds ou=people, ou=groups and a service
// account that may read them; tests add users and groups.
//
// Without slapd installed, tests skip, unless CI=true or CADDY_OCI_E2E=1
// makes that a failure (CI installs it: apt-get install slapd).
package slapdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/caddy-oci/caddy-oci/internal/procstop"
)

// The directory every server holds.
const (
	BaseDN        = "dc=example,dc=org"
	PeopleDN      = "ou=people," + BaseDN
	GroupsDN      = "ou=groups," + BaseDN
	AdminDN       = "cn=admin," + BaseDN
	AdminPassword = "admin-secret"
	// ReaderDN is the service account: it may read people and groups
	// (not passwords); anonymous callers may read nothing.
	ReaderDN       = "cn=reader,ou=services," + BaseDN
	ReaderPassword = "reader-secret"
)

// Server is a running slapd of tests.
type Server struct {
	// URL is the plain listener (ldap://127.0.0.1:port/), which offers
	// StartTLS; TLSURL the ldaps:// one.
	URL, TLSURL string
	// CAFile is the PEM file of the CA that signed the server's
	// certificate (for 127.0.0.1 and localhost); CAPEM its content.
	CAFile string
	CAPEM  []byte

	bin, dir string
	mu       sync.Mutex
	cmd      *exec.Cmd
	exited   chan struct{}
}

var errNotInstalled = errors.New("slapd is not installed (apt-get install slapd)")

// Start starts a server, stopped when t ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := findSlapd()
	if err != nil {
		if os.Getenv("CI") == "true" || os.Getenv("CADDY_OCI_E2E") == "1" {
			t.Fatalf("slapdtest: %v", err)
		}
		t.Skipf("slapdtest: %v; CI=true or CADDY_OCI_E2E=1 makes this a failure", err)
	}
	s := &Server{bin: bin, dir: t.TempDir()}
	if err := s.configure(); err != nil {
		t.Fatalf("slapdtest: %v", err)
	}
	// A port found free may be taken before slapd binds it; a few tries
	// make that race harmless.
	for range 5 {
		p1, p2 := freePort(t), freePort(t)
		s.URL = fmt.Sprintf("ldap://127.0.0.1:%d/", p1)
		s.TLSURL = fmt.Sprintf("ldaps://127.0.0.1:%d/", p2)
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("slapdtest: %v", err)
	}
	t.Cleanup(s.Stop)
	if err := s.seed(); err != nil {
		t.Fatalf("slapdtest: seeding: %v", err)
	}
	return s
}

func findSlapd() (string, error) {
	if p, err := exec.LookPath("slapd"); err == nil {
		return p, nil
	}
	// Not on a non-root PATH.
	if _, err := os.Stat("/usr/sbin/slapd"); err == nil {
		return "/usr/sbin/slapd", nil
	}
	return "", errNotInstalled
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Debian's folders of slapd's modules and schemas.
const (
	modulePath = "/usr/lib/ldap"
	schemaDir  = "/etc/ldap/schema"
)

func (s *Server) configure() error {
	if err := os.Mkdir(filepath.Join(s.dir, "data"), 0o700); err != nil {
		return err
	}
	if err := s.makeCerts(); err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	var b strings.Builder
	for _, sc := range []string{"core", "cosine", "inetorgperson", "nis"} {
		fmt.Fprintf(&b, "include %s/%s.schema\n", schemaDir, sc)
	}
	fmt.Fprintf(&b, `modulepath %s
moduleload back_mdb
moduleload memberof
pidfile %s/slapd.pid
argsfile %s/slapd.args
TLSCACertificateFile %s/ca.pem
TLSCertificateFile %s/server.pem
TLSCertificateKeyFile %s/server-key.pem
database mdb
suffix "%s"
rootdn "%s"
rootpw %s
directory %s/data
maxsize 16777216
overlay memberof
access to attrs=userPassword
	by anonymous auth
	by * none
access to *
	by dn.exact="%s" read
	by self read
	by * none
`, modulePath, s.dir, s.dir, s.dir, s.dir, s.dir, BaseDN, AdminDN, AdminPassword, s.dir, ReaderDN)
	return os.WriteFile(filepath.Join(s.dir, "slapd.conf"), []byte(b.String()), 0o600)
}

// start runs slapd in the foreground (-d 0) so that it is this process's
// child, killed with it.
func (s *Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	logf, err := os.OpenFile(filepath.Join(s.dir, "slapd.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, "-d", "0", "-f", filepath.Join(s.dir, "slapd.conf"), "-h", s.URL+" "+s.TLSURL)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := ldap.DialURL(s.URL)
		if err == nil {
			c.Close()
			s.cmd, s.exited = cmd, exited
			return nil
		}
		select {
		case <-exited:
			log, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
			return fmt.Errorf("slapd exited: %s", log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("slapd did not answer on %s", s.URL)
		}
	}
}

// Stop stops the server; the data stays for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
}

// Restart starts a stopped server again, on the same ports with the same
// data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("slapdtest: restart: %v", err)
	}
}

// Pause stops the server's process (SIGSTOP), as a hung host would:
// connections stay open, new ones are accepted by the kernel, and nothing
// answers. Resume continues it.
func (s *Server) Pause(t testing.TB) { s.signal(t, procstop.Stop) }

// Resume continues a paused server.
func (s *Server) Resume(t testing.TB) { s.signal(t, procstop.Continue) }

func (s *Server) signal(t testing.TB, sig func(pid int) error) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		t.Fatal("slapdtest: server not running")
	}
	if err := sig(s.cmd.Process.Pid); err != nil {
		t.Fatalf("slapdtest: %v", err)
	}
}

// Admin returns a connection bound as the directory's root, closed when
// t ends.
func (s *Server) Admin(t testing.TB) *ldap.Conn {
	t.Helper()
	c, err := s.admin()
	if err != nil {
		t.Fatalf("slapdtest: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (s *Server) admin() (*ldap.Conn, error) {
	c, err := ldap.DialURL(s.URL)
	if err != nil {
		return nil, err
	}
	if err := c.Bind(AdminDN, AdminPassword); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (s *Server) seed() error {
	c, err := s.admin()
	if err != nil {
		return err
	}
	defer c.Close()
	add := func(dn string, attrs map[string][]string) error {
		r := ldap.NewAddRequest(dn, nil)
		for k, v := range attrs {
			r.Attribute(k, v)
		}
		if err := c.Add(r); err != nil {
			return fmt.Errorf("add %s: %w", dn, err)
		}
		return nil
	}
	for _, e := range []struct {
		dn    string
		attrs map[string][]string
	}{
		{BaseDN, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}}},
		{PeopleDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}}},
		{GroupsDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}}},
		{"ou=services," + BaseDN, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"services"}}},
		{ReaderDN, map[string][]string{"objectClass": {"organizationalRole", "simpleSecurityObject"}, "cn": {"reader"}, "userPassword": {ssha(ReaderPassword)}}},
	} {
		if err := add(e.dn, e.attrs); err != nil {
			return err
		}
	}
	return nil
}

// UserDN is the DN of a user added by AddUser.
func UserDN(uid string) string { return "uid=" + ldap.EscapeDN(uid) + "," + PeopleDN }

// GroupDN is the DN of a group added by AddGroup.
func GroupDN(cn string) string { return "cn=" + ldap.EscapeDN(cn) + "," + GroupsDN }

// AddUser adds an inetOrgPerson under ou=people with a salted SHA-1
// password (as slappasswd makes them); an empty password adds none.
func (s *Server) AddUser(t testing.TB, uid, password string) {
	t.Helper()
	attrs := map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {uid}}
	if password != "" {
		attrs["userPassword"] = []string{ssha(password)}
	}
	s.addEntry(t, UserDN(uid), attrs)
}

// AddEntry adds any entry, as the directory's root.
func (s *Server) addEntry(t testing.TB, dn string, attrs map[string][]string) {
	t.Helper()
	r := ldap.NewAddRequest(dn, nil)
	for k, v := range attrs {
		r.Attribute(k, v)
	}
	if err := s.Admin(t).Add(r); err != nil {
		t.Fatalf("slapdtest: add %s: %v", dn, err)
	}
}

// AddGroup adds a groupOfNames under ou=groups whose members are the
// users (by uid); the memberof overlay then lists it in their memberOf.
func (s *Server) AddGroup(t testing.TB, cn string, uids ...string) {
	t.Helper()
	var members []string
	for _, u := range uids {
		members = append(members, UserDN(u))
	}
	if len(members) == 0 {
		members = []string{""} // groupOfNames needs a member; the empty DN is allowed
	}
	s.addEntry(t, GroupDN(cn), map[string][]string{"objectClass": {"groupOfNames"}, "cn": {cn}, "member": members})
}

// SetPassword replaces a user's password.
func (s *Server) SetPassword(t testing.TB, uid, password string) {
	t.Helper()
	r := ldap.NewModifyRequest(UserDN(uid), nil)
	r.Replace("userPassword", []string{ssha(password)})
	if err := s.Admin(t).Modify(r); err != nil {
		t.Fatalf("slapdtest: set password of %s: %v", uid, err)
	}
}

// ssha is password hashed as {SSHA}: SHA-1 of password and salt, then
// the salt, in base64.
func ssha(password string) string {
	salt := make([]byte, 8)
	_, _ = rand.Read(salt)
	h := sha1.Sum(append([]byte(password), salt...))
	return "{SSHA}" + base64.StdEncoding.EncodeToString(append(h[:], salt...))
}

// makeCerts writes ca.pem, server.pem and server-key.pem: a CA made for
// this run, and a certificate it signed for 127.0.0.1 and localhost.
func (s *Server) makeCerts() error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "slapdtest CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	s.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	s.CAFile = filepath.Join(s.dir, "ca.pem")
	for name, data := range map[string][]byte{
		"ca.pem":         s.CAPEM,
		"server.pem":     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		"server-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	} {
		if err := os.WriteFile(filepath.Join(s.dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}
