package main

// The /folder side of the front handler: authentication (vcsim checks none), DELETE (vcsim treats
// it like GET), byte counters and transfer faults. GET/HEAD/PUT themselves are served by vcsim
// (Go's FileServer for GET, so Range requests get 206 with a correct Content-Range).

import (
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path"
	"strconv"
	"strings"
	"time"
)

func (tb *Testbed) authorizedFolder(r *http.Request) bool {
	if c := sessionCookie(r); c != "" {
		tb.mu.Lock()
		ok := tb.sessions[c]
		tb.mu.Unlock()
		if ok {
			return true
		}
	}
	if u, p, ok := r.BasicAuth(); ok && u == tb.user && p == tb.password {
		return true
	}
	return false
}

// folderKey names a /folder request in the counters: "[dsName] path".
func folderKey(r *http.Request) string {
	rel := strings.TrimPrefix(r.URL.Path, "/folder")
	rel = strings.TrimPrefix(rel, "/")
	if ds := r.URL.Query().Get("dsName"); ds != "" {
		return "[" + ds + "] " + rel
	}
	return rel
}

func (tb *Testbed) serveFolder(w http.ResponseWriter, r *http.Request) {
	key := folderKey(r)
	tb.mu.Lock()
	tb.stats.FolderRequests[r.Method]++
	tb.mu.Unlock()

	if !tb.authorizedFolder(r) {
		tb.mu.Lock()
		tb.stats.FolderUnauthorized++
		tb.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="VMware HTTP server"`)
		http.Error(w, "401 Unauthorized", http.StatusUnauthorized)
		return
	}
	// vcsim would hand the session cookie on to nothing; drop it so a stale one cannot matter.
	stripSessionCookie(r)

	match := r.URL.Path // decoded path, e.g. "/folder/web 01/web 01-flat.vmdk"
	if rule := tb.matchTransfer("transfer_fail", r.Method, match); rule != nil {
		log.Printf("fault: %s %s -> %d", r.Method, key, rule.Status)
		if rule.RetryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(rule.RetryAfter))
		}
		http.Error(w, http.StatusText(rule.Status)+" (injected by vbm testbed)", rule.Status)
		return
	}

	switch r.Method {
	case http.MethodDelete:
		tb.deleteFolderFile(w, r)
		return
	case http.MethodPut, http.MethodPost:
		body := &countingReader{r: r.Body}
		if rule := tb.matchTransfer("transfer_slow", r.Method, match); rule != nil {
			body.rate = rule.BytesPerSec
		}
		if rule := tb.matchTransfer("transfer_stall", r.Method, match); rule != nil {
			body.stallAt, body.stallFor = rule.AfterBytes, time.Duration(rule.Seconds*float64(time.Second))
		}
		body.start = time.Now()
		r.Body = body
		tb.next.ServeHTTP(w, r)
		tb.mu.Lock()
		tb.stats.FolderPutBytes += body.n
		tb.stats.FolderPutPerPath[key] += body.n
		tb.mu.Unlock()
		tb.afterUpload(r)
		return
	}

	cw := &countingWriter{ResponseWriter: w, truncateAt: -1, stallAt: -1}
	if r.Method == http.MethodGet {
		if rule := tb.matchTransfer("transfer_truncate", r.Method, match); rule != nil {
			cw.truncateAt = rule.AfterBytes
		}
		if rule := tb.matchTransfer("transfer_slow", r.Method, match); rule != nil {
			cw.rate = rule.BytesPerSec
		}
		if rule := tb.matchTransfer("transfer_stall", r.Method, match); rule != nil {
			cw.stallAt, cw.stallFor = rule.AfterBytes, time.Duration(rule.Seconds*float64(time.Second))
		}
	}
	cw.start = time.Now()
	tb.next.ServeHTTP(cw, r)
	if r.Method == http.MethodGet && cw.status/100 == 2 {
		tb.mu.Lock()
		tb.stats.FolderGetBytes += cw.n
		tb.stats.FolderGetPerPath[key] += cw.n
		tb.mu.Unlock()
	}
	if cw.cut {
		log.Printf("fault: GET %s cut after %d body bytes", key, cw.n)
	}
}

// resolveFolder maps a /folder URL to a local path the way vcsim does (dcPath and dsName may be
// omitted when there is only one datacenter / datastore).
func (tb *Testbed) resolveFolder(r *http.Request) (string, bool) {
	q := r.URL.Query()
	dc := tb.dcByPath(q.Get("dcPath"))
	if dc == nil {
		return "", false
	}
	ds := dc.datastore(q.Get("dsName"))
	if ds == nil {
		return "", false
	}
	rel := path.Clean("/" + strings.TrimPrefix(r.URL.Path, "/folder"))
	if rel == "/" {
		return "", false
	}
	return ds.Dir + rel, true
}

func (tb *Testbed) deleteFolderFile(w http.ResponseWriter, r *http.Request) {
	p, ok := tb.resolveFolder(r)
	if !ok {
		http.Error(w, "404 Not Found", http.StatusNotFound)
		return
	}
	fi, err := os.Lstat(p)
	switch {
	case errors.Is(err, os.ErrNotExist):
		http.Error(w, "404 Not Found", http.StatusNotFound)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	case fi.IsDir():
		http.Error(w, "409 Conflict: is a directory", http.StatusConflict)
	default:
		if err := os.Remove(p); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}
}

// afterUpload notices uploads that replace the flat file of a known disk: its content changed
// outside any VM, so the allocation map is rescanned and its CBT epoch restarts (old changeIds
// would otherwise describe data that is no longer there).
func (tb *Testbed) afterUpload(r *http.Request) {
	p, ok := tb.resolveFolder(r)
	if !ok {
		return
	}
	tb.mu.Lock()
	defer tb.mu.Unlock()
	for _, vs := range tb.vms {
		for _, d := range vs.disks {
			if d.flatPath == p {
				d.mu.Lock()
				d.alloc = nil
				if d.epoch != nil {
					d.newEpoch()
				}
				if fi, err := os.Stat(p); err == nil && fi.Size() > d.capacity {
					log.Printf("upload made %s larger (%d) than the disk capacity %d", p, fi.Size(), d.capacity)
				}
				d.mu.Unlock()
			}
		}
	}
}

// countingWriter counts body bytes and applies GET transfer faults.
type countingWriter struct {
	http.ResponseWriter
	n          int64
	start      time.Time
	rate       int64 // bytes per second, 0 = unlimited
	truncateAt int64 // -1 = never
	stallAt    int64 // -1 = never
	stallFor   time.Duration
	cut        bool
	status     int
}

func (c *countingWriter) WriteHeader(status int) {
	if c.status == 0 {
		c.status = status
	}
	c.ResponseWriter.WriteHeader(status)
}

var errCut = errors.New("connection cut by transfer_truncate")

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.cut {
		return 0, errCut
	}
	if c.status == 0 {
		c.status = http.StatusOK
	}
	written := 0
	for len(p) > 0 {
		if c.stallAt >= 0 && c.n == c.stallAt {
			c.flush()
			time.Sleep(c.stallFor)
			c.stallAt = -1
		}
		if c.truncateAt >= 0 && c.n >= c.truncateAt {
			c.cutConnection()
			return written, errCut
		}
		chunk := p
		if c.rate > 0 && int64(len(chunk)) > c.rate/20+1 {
			chunk = chunk[:c.rate/20+1] // ~50 ms worth per write, so throttling stays smooth
		}
		if c.stallAt >= 0 && c.n+int64(len(chunk)) > c.stallAt {
			chunk = chunk[:c.stallAt-c.n]
		}
		if c.truncateAt >= 0 && c.n+int64(len(chunk)) > c.truncateAt {
			chunk = chunk[:c.truncateAt-c.n]
		}
		if len(chunk) == 0 {
			continue
		}
		m, err := c.ResponseWriter.Write(chunk)
		c.n += int64(m)
		written += m
		p = p[m:]
		if err != nil {
			return written, err
		}
		if c.rate > 0 {
			due := c.start.Add(time.Duration(float64(c.n) / float64(c.rate) * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				c.flush()
				time.Sleep(d)
			}
		}
	}
	return written, nil
}

func (c *countingWriter) flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// cutConnection sends what was written so far and closes the TCP connection without finishing
// the response (and, over TLS, without a close_notify), like a network failure mid-body.
func (c *countingWriter) cutConnection() {
	c.cut = true
	c.flush()
	hj, ok := c.ResponseWriter.(http.Hijacker)
	if !ok {
		return
	}
	conn, buf, err := hj.Hijack()
	if err != nil {
		log.Printf("transfer_truncate: hijack failed: %v", err)
		return
	}
	_ = buf.Flush()
	if nc, ok := conn.(interface{ NetConn() net.Conn }); ok {
		conn = nc.NetConn()
	}
	_ = conn.Close()
}

// countingReader counts upload bytes and applies PUT throttling and stalls.
type countingReader struct {
	r        io.ReadCloser
	n        int64
	start    time.Time
	rate     int64
	stallAt  int64
	stallFor time.Duration
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.rate > 0 && int64(len(p)) > c.rate/20+1 {
		p = p[:c.rate/20+1]
	}
	if c.stallFor > 0 && c.n < c.stallAt && c.n+int64(len(p)) > c.stallAt {
		p = p[:c.stallAt-c.n]
	}
	if c.stallFor > 0 && c.n == c.stallAt {
		time.Sleep(c.stallFor)
		c.stallFor = 0
	}
	m, err := c.r.Read(p)
	c.n += int64(m)
	if c.rate > 0 {
		due := c.start.Add(time.Duration(float64(c.n) / float64(c.rate) * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
	}
	return m, err
}

func (c *countingReader) Close() error { return c.r.Close() }
