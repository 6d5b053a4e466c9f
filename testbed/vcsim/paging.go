package main

// Paging of RetrievePropertiesEx results. vcsim 0.24 ignores options.maxObjects and has no
// ContinueRetrievePropertiesEx; a real vCenter returns at most maxObjects objects plus a token, and
// clients must loop. The front handler cuts vcsim's complete answer into pages and keeps the rest
// per session until it is continued or cancelled.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"net/http"

	"github.com/vmware/govmomi/vim25/methods"
	"github.com/vmware/govmomi/vim25/types"
	"github.com/vmware/govmomi/vim25/xml"
)

type pendingResult struct {
	session  string
	pageSize int
	rest     []types.ObjectContent
}

func newToken() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "vbm-page-" + hex.EncodeToString(b)
}

// decodeRetrieveResult extracts the RetrieveResult of a recorded RetrievePropertiesEx answer.
func decodeRetrieveResult(body []byte) (*types.RetrieveResult, bool) {
	var env struct {
		Body struct {
			Res *types.RetrievePropertiesExResponse `xml:"urn:vim25 RetrievePropertiesExResponse"`
		} `xml:"http://schemas.xmlsoap.org/soap/envelope/ Body"`
	}
	dec := xml.NewDecoder(bytes.NewReader(body))
	dec.TypeFunc = types.TypeFunc()
	if err := dec.Decode(&env); err != nil || env.Body.Res == nil {
		return nil, false
	}
	if env.Body.Res.Returnval == nil {
		return &types.RetrieveResult{}, true
	}
	return env.Body.Res.Returnval, true
}

// page splits off the first page and, when more remain, registers the rest under a new token.
func (tb *Testbed) page(session string, pageSize int, objects []types.ObjectContent) types.RetrieveResult {
	if len(objects) <= pageSize {
		return types.RetrieveResult{Objects: objects}
	}
	tok := newToken()
	tb.mu.Lock()
	tb.pending[tok] = &pendingResult{session: session, pageSize: pageSize, rest: objects[pageSize:]}
	tb.mu.Unlock()
	return types.RetrieveResult{Token: tok, Objects: objects[:pageSize]}
}

// pageRetrieveResult rewrites a successful RetrievePropertiesEx answer when maxObjects asks for
// smaller pages than vcsim returned. It reports whether it wrote the response.
func (tb *Testbed) pageRetrieveResult(w http.ResponseWriter, req *types.RetrievePropertiesEx, body []byte, session string) bool {
	max := int(req.Options.MaxObjects)
	if max <= 0 {
		return false
	}
	res, ok := decodeRetrieveResult(body)
	if !ok || len(res.Objects) <= max {
		return false
	}
	out := tb.page(session, max, res.Objects)
	writeBody(w, &methods.RetrievePropertiesExBody{Res: &types.RetrievePropertiesExResponse{Returnval: &out}})
	return true
}

func (tb *Testbed) continueRetrieve(w http.ResponseWriter, req *types.ContinueRetrievePropertiesEx, session string) {
	tb.mu.Lock()
	p := tb.pending[req.Token]
	if p != nil && p.session == session {
		delete(tb.pending, req.Token)
	}
	tb.mu.Unlock()
	if p == nil || p.session != session {
		writeFault(w, http.StatusInternalServerError, "A specified parameter was not correct: token", &types.InvalidArgument{InvalidProperty: "token"})
		return
	}
	out := tb.page(session, p.pageSize, p.rest)
	writeBody(w, &methods.ContinueRetrievePropertiesExBody{Res: &types.ContinueRetrievePropertiesExResponse{Returnval: out}})
}

func (tb *Testbed) cancelRetrieve(w http.ResponseWriter, req *types.CancelRetrievePropertiesEx, session string) {
	tb.mu.Lock()
	p := tb.pending[req.Token]
	if p != nil && p.session == session {
		delete(tb.pending, req.Token)
	}
	tb.mu.Unlock()
	if p == nil || p.session != session {
		writeFault(w, http.StatusInternalServerError, "A specified parameter was not correct: token", &types.InvalidArgument{InvalidProperty: "token"})
		return
	}
	writeBody(w, &methods.CancelRetrievePropertiesExBody{Res: &types.CancelRetrievePropertiesExResponse{}})
}
