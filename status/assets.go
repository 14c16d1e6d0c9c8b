package status

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
)

// ui holds the page and its assets.
//
//go:embed statusui/index.html statusui/status.js statusui/status.css
var ui embed.FS

// asset is an embedded asset, ready to serve.
type asset struct {
	body        []byte
	contentType string
	etag        string
}

// index is the page; assets are its script and style sheet,
// by file name.
var (
	index  = mustReadUI("index.html")
	assets = map[string]asset{
		"status.js":  newAsset("status.js", "text/javascript; charset=utf-8"),
		"status.css": newAsset("status.css", "text/css; charset=utf-8"),
	}
)

// newAsset loads an embedded asset and computes its ETag.
func newAsset(name, contentType string) asset {
	body := mustReadUI(name)
	sum := sha256.Sum256(body)
	return asset{body: body, contentType: contentType, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
}

// mustReadUI reads an embedded file; the embed directive guarantees
// it exists, so a failure is a build defect.
func mustReadUI(name string) []byte {
	b, err := ui.ReadFile("statusui/" + name)
	if err != nil {
		panic("bifrost: embedded status page file missing: " + name)
	}
	return b
}
