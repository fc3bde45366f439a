package main

import (
	_ "embed"
	"net/http"
)

// page is the web page at /: every lock with its holder, token and a live countdown, pushed
// over /ws/locks, with a prefix filter, and release and extend behind a confirmation. With API
// keys on it asks for one and keeps it in the tab's session storage, never in a URL.
//
//go:embed page.html
var page []byte

func servePage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(page)
}
