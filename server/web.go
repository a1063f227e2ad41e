package server

import (
	_ "embed" // the web page
	"net/http"
)

//go:embed web/index.html
var indexHTML []byte

// handleIndex serves the web page: one self-contained HTML file, no CDN.
func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	_, _ = w.Write(indexHTML)
}

// favicon is the page's icon: a small SVG, also served as /favicon.ico,
// which browsers ask for on their own.
const favicon = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#3b5bdb"/><circle cx="12" cy="13" r="6" fill="#ffd43b"/><path d="M3 27l9-9 6 6 4-4 7 7z" fill="#fff"/></svg>`

func (s *Server) handleFavicon(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "image/svg+xml")
	w.Header().Set("Cache-Control", "public, max-age=86400")
	_, _ = w.Write([]byte(favicon))
}
