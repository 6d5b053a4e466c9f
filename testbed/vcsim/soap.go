package main

// The SOAP side of the front handler: it decodes each /sdk request, enforces a session (vcsim lets
// RetrieveProperties(Ex) through without one; a real vCenter does not), injects faults, answers
// QueryChangedDiskAreas itself, and post-processes the calls whose effects vcsim gets wrong
// (snapshot changeIds, RegisterVM disks, CBT toggles, login bookkeeping).

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/soap"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

var vim25TypeFunc = types.TypeFunc()

// typeFunc is vcsim's decoder type lookup, including its tolerance for prefixed type names.
func typeFunc(name string) (reflect.Type, bool) {
	t, ok := vim25TypeFunc(name)
	if !ok {
		if kind := strings.SplitN(name, ":", 2); len(kind) == 2 {
			t, ok = vim25TypeFunc(kind[1])
		}
	}
	return t, ok
}

// Methods a real vCenter answers without a session.
var anonymousMethods = map[string]bool{
	"RetrieveServiceContent":      true,
	"Login":                       true,
	"LoginByToken":                true,
	"LoginExtensionByCertificate": true,
	"LoginExtensionBySubjectName": true,
	"LoginBySSPI":                 true,
	"CloneSession":                true,
}

func (tb *Testbed) serveSOAP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	_ = r.Body.Close()
	if err != nil {
		http.Error(w, "cannot read body", http.StatusBadRequest)
		return
	}
	restore := func() {
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	method, err := simulator.UnmarshalBody(typeFunc, body)
	if err != nil {
		restore()
		tb.next.ServeHTTP(w, r) // vcsim answers malformed requests with its own fault
		return
	}
	name := method.Name

	tb.mu.Lock()
	tb.stats.SOAPCalls[name]++
	cookie := sessionCookie(r)
	valid := cookie != "" && tb.sessions[cookie]
	tb.mu.Unlock()

	if cookie != "" && (!valid || strings.HasPrefix(name, "Login")) {
		// A cookie of an expired/terminated session must not reach vcsim. And vcsim refuses Login
		// while a session is attached to the request, where vCenter simply logs in again (the
		// client then holds the new cookie; the old session lives on until it is logged out).
		stripSessionCookie(r)
	}
	if !valid && !anonymousMethods[name] {
		tb.mu.Lock()
		tb.stats.NotAuthenticated++
		tb.mu.Unlock()
		writeFault(w, http.StatusInternalServerError, "The session is not authenticated.", &types.NotAuthenticated{
			NoPermission: types.NoPermission{Object: method.This, PrivilegeId: "System.View"},
		})
		return
	}

	target := vmName(method.This)
	switch req := method.Body.(type) {
	case *types.RegisterVM_Task:
		target = req.Name
		if target == "" {
			_, rel, _ := splitDatastorePath(req.Path)
			target = path.Dir(rel)
		}
	case *types.CreateVM_Task:
		target = req.Config.Name
	}
	if rule := tb.matchSOAP("slow_soap", name, target); rule != nil {
		time.Sleep(time.Duration(rule.DelayMS) * time.Millisecond)
	}
	if rule := tb.matchSOAP("soap_fault", name, target); rule != nil {
		if rule.Fault == "" {
			if rule.RetryAfter > 0 {
				w.Header().Set("Retry-After", strconv.Itoa(rule.RetryAfter))
			}
			http.Error(w, http.StatusText(rule.Status), rule.Status)
			return
		}
		f, _ := newFault(rule.Fault, rule.Message)
		writeFault(w, rule.Status, rule.Message, f)
		return
	}
	if rule := tb.matchSOAP("task_fail", name, target); rule != nil {
		tb.failTask(w, method, rule)
		return
	}

	if serveFindByUUID(w, method.Body) {
		return
	}
	switch req := method.Body.(type) {
	case *types.QueryChangedDiskAreas:
		info, qerr := tb.queryChangedDiskAreas(req)
		if qerr != nil {
			writeFault(w, http.StatusInternalServerError, qerr.msg, qerr.fault)
			return
		}
		writeBody(w, &methods.QueryChangedDiskAreasBody{Res: &types.QueryChangedDiskAreasResponse{Returnval: *info}})
		return
	case *types.ContinueRetrievePropertiesEx:
		tb.continueRetrieve(w, req, cookie)
		return
	case *types.CancelRetrievePropertiesEx:
		tb.cancelRetrieve(w, req, cookie)
		return
	case *types.RegisterVM_Task:
		tb.prepareRegister(req)
	}

	restore()
	rec := httptest.NewRecorder()
	tb.next.ServeHTTP(rec, r)

	if req, ok := method.Body.(*types.RetrievePropertiesEx); ok && rec.Code == http.StatusOK {
		if tb.pageRetrieveResult(w, req, rec.Body.Bytes(), cookie) {
			return
		}
	}

	if rec.Code == http.StatusOK {
		tb.afterSOAP(method, rec, cookie)
	}
	// vCenter scopes the session cookie to "/"; vcsim sets no Path, which makes a cookie jar scope
	// it to the directory of the request URL (e.g. "/sdk" for /sdk/vimService) and then not send
	// it to /folder.
	for i, c := range rec.Header()["Set-Cookie"] {
		if strings.HasPrefix(c, soap.SessionCookieName+"=") && !strings.Contains(strings.ToLower(c), "path=") {
			rec.Header()["Set-Cookie"][i] = c + "; Path=/"
		}
	}
	for k, v := range rec.Header() {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.Code)
	_, _ = w.Write(rec.Body.Bytes())
}

// afterSOAP post-processes a successful call before the client sees the answer.
func (tb *Testbed) afterSOAP(method *simulator.Method, rec *httptest.ResponseRecorder, cookie string) {
	switch req := method.Body.(type) {
	case *types.Login, *types.LoginByToken, *types.LoginExtensionByCertificate, *types.CloneSession:
		for _, c := range (&http.Response{Header: rec.Header()}).Cookies() {
			if c.Name == soap.SessionCookieName {
				tb.mu.Lock()
				tb.sessions[c.Value] = true
				tb.stats.Logins++
				tb.mu.Unlock()
			}
		}
	case *types.Logout:
		tb.mu.Lock()
		delete(tb.sessions, cookie)
		tb.stats.Logouts++
		tb.mu.Unlock()
	case *types.TerminateSession:
		tb.mu.Lock()
		for _, id := range req.SessionId {
			delete(tb.sessions, id)
		}
		tb.mu.Unlock()
	case *types.CreateSnapshot_Task:
		if info := taskInfo(rec.Body.Bytes()); info != nil && info.State == types.TaskInfoStateSuccess {
			if snap, ok := info.Result.(types.ManagedObjectReference); ok {
				tb.afterCreateSnapshot(req.This, snap)
			}
		}
	case *types.ReconfigVM_Task:
		tb.reconcileVM(req.This)
	case *types.CreateVM_Task:
		if info := taskInfo(rec.Body.Bytes()); info != nil && info.State == types.TaskInfoStateSuccess {
			if vm, ok := info.Result.(types.ManagedObjectReference); ok {
				tb.reconcileVM(vm)
			}
		}
	case *types.RegisterVM_Task:
		if info := taskInfo(rec.Body.Bytes()); info != nil && info.State == types.TaskInfoStateSuccess {
			if vm, ok := info.Result.(types.ManagedObjectReference); ok {
				tb.afterRegister(req, vm)
			}
		}
	}
}

var taskReturn = regexp.MustCompile(`<returnval type="Task">([^<]+)</returnval>`)

// taskInfo finds the Task a *_Task response names. vcsim 0.24 runs tasks synchronously, so the
// task has already finished when the response is written.
func taskInfo(resp []byte) *types.TaskInfo {
	m := taskReturn.FindSubmatch(resp)
	if m == nil {
		return nil
	}
	ref := types.ManagedObjectReference{Type: "Task", Value: string(m[1])}
	t, ok := simulator.Map.Get(ref).(*simulator.Task)
	if !ok {
		return nil
	}
	var info types.TaskInfo
	simulator.Map.WithLock(t, func() { info = t.Info })
	return &info
}

// failTask answers a *_Task call with a real Task that ends in state=error, without doing the
// operation.
func (tb *Testbed) failTask(w http.ResponseWriter, method *simulator.Method, rule *FaultRule) {
	fault, err := newFault(rule.Fault, rule.Message)
	if err != nil {
		writeFault(w, http.StatusInternalServerError, err.Error(), &types.SystemError{Reason: err.Error()})
		return
	}
	var entity interface {
		Reference() types.ManagedObjectReference
	} = method.This
	if obj := simulator.Map.Get(method.This); obj != nil {
		entity = obj
	}
	id := strings.TrimSuffix(method.Name, "_Task")
	id = strings.ToLower(id[:1]) + id[1:]
	task := simulator.CreateTask(entity, id, func(*simulator.Task) (types.AnyType, types.BaseMethodFault) {
		return nil, fault
	})
	ref := task.Run()
	// vcsim puts the Go type name into localizedMessage; a real vCenter puts human text there.
	simulator.Map.Update(task, []types.PropertyChange{
		{Name: "info.error", Val: types.LocalizedMethodFault{Fault: fault, LocalizedMessage: rule.Message}},
	})
	log.Printf("fault: %s on %s fails as task %s (%s: %s)", method.Name, method.This, ref.Value, rule.Fault, rule.Message)
	var b bytes.Buffer
	b.WriteString(xml.Header)
	b.WriteString(`<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>`)
	fmt.Fprintf(&b, `<%sResponse xmlns="urn:vim25"><returnval type="Task">`, method.Name)
	_ = xml.EscapeText(&b, []byte(ref.Value))
	fmt.Fprintf(&b, `</returnval></%sResponse></soapenv:Body></soapenv:Envelope>`, method.Name)
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b.Bytes())
}

func sessionCookie(r *http.Request) string {
	if c, err := r.Cookie(soap.SessionCookieName); err == nil {
		return strings.Trim(c.Value, `"`)
	}
	return ""
}

// stripSessionCookie removes vmware_soap_session from the request, keeping other cookies.
func stripSessionCookie(r *http.Request) {
	cookies := r.Cookies()
	r.Header.Del("Cookie")
	for _, c := range cookies {
		if c.Name != soap.SessionCookieName {
			r.AddCookie(c)
		}
	}
}

// --- response encoding (the same shapes vcsim's ServeSDK writes) -----------------------------------

type soapEnvelope struct {
	XMLName xml.Name    `xml:"soapenv:Envelope"`
	Enc     string      `xml:"xmlns:soapenc,attr"`
	Env     string      `xml:"xmlns:soapenv,attr"`
	XSD     string      `xml:"xmlns:xsd,attr"`
	XSI     string      `xml:"xmlns:xsi,attr"`
	Body    interface{} `xml:"soapenv:Body"`
}

type faultDetail struct {
	Fault types.AnyType
}

type soapFault struct {
	XMLName xml.Name `xml:"soapenv:Fault"`
	Code    string   `xml:"faultcode"`
	String  string   `xml:"faultstring"`
	Detail  struct {
		Fault *faultDetail
	} `xml:"detail"`
}

// MarshalXML names the detail element "<Type>Fault" with xsi:type="<Type>", as vCenter does.
func (d *faultDetail) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	kind := reflect.TypeOf(d.Fault).Elem().Name()
	start.Name.Local = kind + "Fault"
	start.Attr = append(start.Attr,
		xml.Attr{Name: xml.Name{Local: "xmlns"}, Value: "urn:" + vim25.Namespace},
		xml.Attr{Name: xml.Name{Local: "xsi:type"}, Value: kind})
	return e.EncodeElement(d.Fault, start)
}

type response struct {
	Body soap.HasFault
}

func (r *response) MarshalXML(e *xml.Encoder, start xml.StartElement) error {
	val := reflect.ValueOf(r.Body).Elem().FieldByName("Res")
	res := xml.StartElement{Name: xml.Name{Space: "urn:" + vim25.Namespace, Local: val.Elem().Type().Name()}}
	if err := e.EncodeToken(start); err != nil {
		return err
	}
	if err := e.EncodeElement(val.Interface(), res); err != nil {
		return err
	}
	return e.EncodeToken(start.End())
}

func writeEnvelope(w http.ResponseWriter, status int, body interface{}) {
	var out bytes.Buffer
	out.WriteString(xml.Header)
	e := xml.NewEncoder(&out)
	err := e.Encode(&soapEnvelope{
		Enc:  "http://schemas.xmlsoap.org/soap/encoding/",
		Env:  "http://schemas.xmlsoap.org/soap/envelope/",
		XSD:  "http://www.w3.org/2001/XMLSchema",
		XSI:  "http://www.w3.org/2001/XMLSchema-instance",
		Body: body,
	})
	if err == nil {
		err = e.Flush()
	}
	if err != nil {
		log.Printf("encoding SOAP response: %v", err)
		http.Error(w, "encoding error", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/xml; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

func writeBody(w http.ResponseWriter, body soap.HasFault) {
	writeEnvelope(w, http.StatusOK, &response{Body: body})
}

func writeFault(w http.ResponseWriter, status int, msg string, fault types.BaseMethodFault) {
	f := &soapFault{Code: "ServerFaultCode", String: msg}
	f.Detail.Fault = &faultDetail{Fault: fault}
	writeEnvelope(w, status, struct{ Fault *soapFault }{f})
}
