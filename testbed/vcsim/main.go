// Command vbm-vcsim is the vCenter testbed of vbm: govmomi's vCenter simulator (vcsim 0.24)
// with an HTTP front handler that adds what vcsim lacks — realistic disk files, Changed Block
// Tracking (changeIds, QueryChangedDiskAreas), RegisterVM that reads the .vmx, authentication on
// /folder and on every SOAP call, DELETE on /folder, fault injection and a JSON control endpoint.
//
// vcsim is extended in front of its handler, never by wrapping its objects with Map.Put: in 0.24
// that breaks property reads and CreateSnapshot of the wrapped VM (see vsphere-api-facts.md).
//
// Usage: vbm-vcsim --spec FILE [--listen 127.0.0.1:0] [--plain-listen ADDR] [--data-dir DIR]
//
//	[--user U] [--password P] [--exit-on-stdin-eof]
//
// When ready it prints one JSON line to stdout (URLs, thumbprints, credentials, certificate);
// logs go to stderr. See testbed/README.md.
package main

import (
	"context"
	cryptorand "crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

func main() {
	os.Exit(run())
}

func usageError(format string, args ...interface{}) int {
	fmt.Fprintf(os.Stderr, "vbm-vcsim: "+format+"\n", args...)
	return 2
}

func run() int {
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	log.SetPrefix("vbm-vcsim: ")
	log.SetOutput(os.Stderr)

	fs := flag.NewFlagSet("vbm-vcsim", flag.ContinueOnError)
	specFile := fs.String("spec", "", "inventory spec (JSON), required")
	listen := fs.String("listen", "127.0.0.1:0", "HTTPS listen address")
	plainListen := fs.String("plain-listen", "", "optional plain-HTTP listen address serving the same handler")
	dataDir := fs.String("data-dir", "", "directory for the datastores (default: a new temp dir, removed at exit)")
	user := fs.String("user", "vbm@vsphere.local", "the only user name that can log in")
	password := fs.String("password", "vbm-secret", "its password")
	exitOnEOF := fs.Bool("exit-on-stdin-eof", false, "exit when stdin reaches EOF (so an orphaned testbed dies with its parent)")
	trace := fs.Bool("trace", false, "log every SOAP request and response to stderr")
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		return usageError("unexpected arguments: %v", fs.Args())
	}
	if *specFile == "" {
		return usageError("--spec is required")
	}
	if *user == "" || *password == "" {
		return usageError("--user and --password must not be empty")
	}
	simulator.Trace = *trace

	started := time.Now()
	spec, err := LoadSpec(*specFile)
	if err != nil {
		return usageError("%v", err)
	}

	dir, removeDir, err := prepareDataDir(*dataDir)
	if err != nil {
		return usageError("%v", err)
	}
	cleanup := func() {
		if removeDir {
			_ = os.RemoveAll(dir)
		}
	}

	srv, err := start(spec, dir, *user, *password, *listen, *plainListen)
	if err != nil {
		cleanup()
		fmt.Fprintf(os.Stderr, "vbm-vcsim: %v\n", err)
		var se *specError
		if errors.As(err, &se) {
			return 2
		}
		return 1
	}

	line, _ := json.Marshal(srv.tb.startup)
	fmt.Fprintf(os.Stdout, "%s\n", line)
	_ = os.Stdout.Sync()
	log.Printf("ready in %v: %s", time.Since(started).Round(time.Millisecond), srv.tb.startup.SDKURL)

	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	eof := make(chan struct{})
	if *exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			close(eof)
		}()
	}
	select {
	case sig := <-stop:
		log.Printf("%v: shutting down", sig)
	case <-eof:
		log.Printf("stdin closed: shutting down")
	}
	// Close waits for running requests; a stalled or throttled transfer must not keep us alive.
	done := make(chan struct{})
	go func() {
		srv.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		log.Printf("requests still running after 2s; exiting anyway")
	}
	cleanup()
	return 0
}

// prepareDataDir returns the datastore root and whether it must be removed at exit.
func prepareDataDir(dir string) (string, bool, error) {
	if dir == "" {
		d, err := os.MkdirTemp("", "vbm-vcsim-")
		if err != nil {
			return "", false, err
		}
		return d, true, nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", false, err
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		return "", false, err
	}
	entries, err := os.ReadDir(abs)
	if err != nil {
		return "", false, err
	}
	if len(entries) > 0 {
		// The inventory is rebuilt from the spec at every start; old files would collide with it.
		return "", false, fmt.Errorf("--data-dir %s is not empty", abs)
	}
	return abs, false, nil
}

// startupInfo is the single JSON line printed on stdout when the testbed is ready.
type startupInfo struct {
	SDKURL           string  `json:"sdk_url"`
	PlainSDKURL      *string `json:"plain_sdk_url"`
	ControlURL       string  `json:"control_url"`
	ThumbprintSHA256 string  `json:"thumbprint_sha256"`
	ThumbprintSHA1   string  `json:"thumbprint_sha1"`
	User             string  `json:"user"`
	Password         string  `json:"password"`
	DataDir          string  `json:"data_dir"`
	CertPEM          string  `json:"cert_pem"`
	InstanceUUID     string  `json:"instance_uuid"`
	APIType          string  `json:"api_type"`
}

type server struct {
	tb    *Testbed
	https *simulator.Server
	plain *http.Server
}

func (s *server) close() {
	if s.plain != nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = s.plain.Shutdown(ctx)
		cancel()
	}
	s.https.CloseClientConnections()
	s.https.Close()
}

func start(spec *Spec, dataDir, user, password, listen, plainListen string) (*server, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, &specError{fmt.Sprintf("bad --listen %q: %v", listen, err)}
	}
	cert, certPEM, err := newCertificate(host)
	if err != nil {
		return nil, err
	}

	var model *simulator.Model
	if spec.ESX {
		// A standalone ESXi host: vcsim creates ha-datacenter, its folders, the host ha-host with
		// its compute resource and root pool; the spec adds datastores and VMs.
		model = simulator.ESX()
	} else {
		// An empty vCenter: no datacenters, hosts or VMs; the spec builds those.
		model = simulator.VPX()
		model.Datacenter = 0
		model.Host = 0
		model.Cluster = 0
		model.ClusterHost = 0
		model.Portgroup = 0
	}
	model.Datastore = 0
	model.Machine = 0
	model.Autostart = false
	if err := model.Create(); err != nil {
		return nil, err
	}
	// vcsim gives every instance the same vCenter instance UUID; a real vCenter has its own, and
	// vbm tells vCenters apart by it. ESXi has none (about.instanceUuid is empty).
	instanceUUID := ""
	si, _ := simulator.Map.Get(vim25.ServiceInstance).(*simulator.ServiceInstance)
	if !spec.ESX {
		instanceUUID, err = randomUUID()
		if err != nil {
			return nil, err
		}
		if si != nil {
			si.Content.About.InstanceUuid = instanceUUID
		}
	}
	apiType := ""
	if si != nil {
		apiType = si.Content.About.ApiType
	}

	tb := newTestbed(spec, dataDir, user, password)
	tb.client, err = vim25.NewClient(context.Background(), model.Service)
	if err != nil {
		return nil, err
	}
	if err := tb.build(context.Background()); err != nil {
		return nil, err
	}

	// vcsim's SessionManager only accepts Listen.User when it is set (otherwise any non-empty
	// user/password logs in).
	model.Service.Listen = &url.URL{Host: listen, User: url.UserPassword(user, password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	hs, err := newServer(model.Service)
	if err != nil {
		return nil, err
	}
	tb.next = hs.Config.Handler
	front := &frontHandler{tb: tb}
	// net/http reads Handler per request; no client knows the address yet.
	hs.Config.Handler = front
	hs.Config.ErrorLog = log.New(os.Stderr, "vbm-vcsim http: ", log.LstdFlags)

	addr := hs.Listener.Addr().(*net.TCPAddr)
	base := "https://" + urlHost(addr)
	srv := &server{tb: tb, https: hs}

	var plainURL *string
	if plainListen != "" {
		l, err := net.Listen("tcp", plainListen)
		if err != nil {
			hs.Close()
			return nil, fmt.Errorf("--plain-listen: %v", err)
		}
		srv.plain = &http.Server{Handler: front, ErrorLog: hs.Config.ErrorLog}
		go func() { _ = srv.plain.Serve(l) }()
		u := "http://" + urlHost(l.Addr().(*net.TCPAddr)) + "/sdk"
		plainURL = &u
	}

	s256, s1 := thumbprints(cert.Certificate[0])
	tb.startup = &startupInfo{
		SDKURL:           base + "/sdk",
		PlainSDKURL:      plainURL,
		ControlURL:       base + "/_testbed",
		ThumbprintSHA256: s256,
		ThumbprintSHA1:   s1,
		User:             user,
		Password:         password,
		DataDir:          dataDir,
		CertPEM:          string(certPEM),
		InstanceUUID:     instanceUUID,
		APIType:          apiType,
	}
	return srv, nil
}

// randomUUID returns a random (version 4) UUID.
func randomUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := cryptorand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}

// newServer starts vcsim's HTTPS server; it panics when it cannot listen, which becomes an error.
func newServer(s *simulator.Service) (srv *simulator.Server, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cannot start the server: %v", r)
		}
	}()
	return s.NewServer(), nil
}

// urlHost renders a listener address for a URL; a wildcard address is reached via loopback.
func urlHost(a *net.TCPAddr) string {
	ip := a.IP
	if ip == nil || ip.IsUnspecified() {
		ip = net.IPv4(127, 0, 0, 1)
	}
	return net.JoinHostPort(ip.String(), fmt.Sprint(a.Port))
}

// frontHandler routes every request: control endpoint, SOAP, /folder, or straight to vcsim.
type frontHandler struct{ tb *Testbed }

func (f *frontHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/_testbed" || strings.HasPrefix(p, "/_testbed/"):
		f.tb.serveControl(w, r)
	case (p == "/sdk" || p == "/sdk/vimService") && r.Method == http.MethodPost:
		f.tb.serveSOAP(w, r)
	case p == "/folder" || strings.HasPrefix(p, "/folder/"):
		f.tb.serveFolder(w, r)
	default:
		f.tb.next.ServeHTTP(w, r)
	}
}
