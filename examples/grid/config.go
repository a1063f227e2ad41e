package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"unicode"

	"github.com/sdpipe/sdpipe/sd"
)

// Config describes a grid: every subject by every style, Images images
// each. It is read from a JSON file (field names below) and flags override
// its fields.
type Config struct {
	Model          string   `json:"model,omitempty"`    // model folder; "" = the default model
	Subjects       []string `json:"subjects"`           // "a lighthouse at dusk", …
	Styles         []string `json:"styles"`             // "Hokusai", …
	Template       string   `json:"template,omitempty"` // prompt template; "" = "{subject} by {style}"
	Images         int      `json:"images,omitempty"`   // images per subject × style; 0 = 1
	Seed           int64    `json:"seed"`               // base seed; item seeds derive from it
	NegativePrompt string   `json:"negative_prompt,omitempty"`
	Steps          int      `json:"steps,omitempty"`    // 0 = sd.DefaultSteps
	Guidance       float64  `json:"guidance,omitempty"` // 0 = the model's default (7.5; the default model's own)
	Scheduler      string   `json:"scheduler,omitempty"`
	Width          int      `json:"width,omitempty"` // 0 = the model's default
	Height         int      `json:"height,omitempty"`
	Generator      string   `json:"generator,omitempty"` // "numpy" (default) or "torch"
}

// DefaultTemplate is the prompt of an item, as in Metaflow's example.
const DefaultTemplate = "{subject} by {style}"

// ErrConfig is wrapped by every configuration error.
var ErrConfig = errors.New("grid: bad config")

func configErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrConfig, fmt.Sprintf(format, args...))
}

// LoadConfig reads a JSON config; unknown fields are errors, so a typo
// does not silently fall back to a default.
func LoadConfig(path string) (Config, error) {
	var c Config
	b, err := os.ReadFile(path)
	if err != nil {
		return c, fmt.Errorf("grid: config: %w", err)
	}
	return parseConfig(b)
}

func parseConfig(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, configErr("%v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return c, configErr("trailing data after the JSON object")
	}
	return c, nil
}

// Validate checks c and fills its defaults in place.
func (c *Config) Validate() error {
	var errs []error
	if len(c.Subjects) == 0 {
		errs = append(errs, configErr("no subjects"))
	}
	if len(c.Styles) == 0 {
		errs = append(errs, configErr("no styles"))
	}
	for _, l := range []struct {
		name string
		v    []string
	}{{"subject", c.Subjects}, {"style", c.Styles}} {
		seen := map[string]bool{}
		for _, s := range l.v {
			if strings.TrimSpace(s) == "" {
				errs = append(errs, configErr("empty %s", l.name))
			}
			if seen[s] {
				errs = append(errs, configErr("duplicate %s %q", l.name, s))
			}
			seen[s] = true
		}
	}
	if c.Template == "" {
		c.Template = DefaultTemplate
	}
	if !strings.Contains(c.Template, "{subject}") {
		errs = append(errs, configErr("template %q lacks {subject}", c.Template))
	}
	if c.Images == 0 {
		c.Images = 1
	}
	if c.Images < 0 || c.Images > 10000 {
		errs = append(errs, configErr("images %d is outside [1, 10000]", c.Images))
	}
	if c.Seed < 0 {
		errs = append(errs, configErr("seed %d is negative", c.Seed))
	}
	if c.Steps < 0 || c.Steps > 1000 {
		errs = append(errs, configErr("steps %d is outside [0, 1000]", c.Steps))
	}
	if c.Guidance < 0 || c.Guidance > sd.MaxGuidance {
		errs = append(errs, configErr("guidance %g is outside [0, %d]", c.Guidance, sd.MaxGuidance))
	}
	if c.Width < 0 || c.Height < 0 || c.Width%8 != 0 || c.Height%8 != 0 || c.Width > sd.MaxSize || c.Height > sd.MaxSize {
		errs = append(errs, configErr("size %dx%d: want multiples of 8 up to %d (0 = the model's)", c.Width, c.Height, sd.MaxSize))
	}
	if c.Generator == "" {
		c.Generator = "numpy"
	}
	if _, err := sd.ParseGenerator(c.Generator); err != nil {
		errs = append(errs, configErr("generator: %v", err))
	}
	return errors.Join(errs...)
}

// Item is one image of the grid.
type Item struct {
	Index   int // position in the grid: subjects, then styles, then replicas
	Subject string
	Style   string
	Replica int // 0 … Images-1
	Prompt  string
	Seed    int64
	Key     string // stable identifier of the cell (subject, style, replica)
	File    string // output path relative to the output folder
}

// Items enumerates the grid in its canonical order. c must be valid.
func (c *Config) Items() []Item {
	items := make([]Item, 0, len(c.Subjects)*len(c.Styles)*c.Images)
	for _, subject := range c.Subjects {
		for _, style := range c.Styles {
			for r := range c.Images {
				key := ItemKey(subject, style, r)
				items = append(items, Item{
					Index:   len(items),
					Subject: subject,
					Style:   style,
					Replica: r,
					Prompt:  strings.NewReplacer("{subject}", subject, "{style}", style).Replace(c.Template),
					Seed:    DeriveSeed(c.Seed, subject, style, r),
					Key:     key,
					File:    fmt.Sprintf("images/%s/%s-%d-%s.png", slug(style), slug(subject), r, key[:8]),
				})
			}
		}
	}
	return items
}

// DeriveSeed returns the seed of one item: the first four bytes, big
// endian, of
//
//	sha256("sdpipe-grid-seed/v1\x00" + base + "\x00" + subject + "\x00" + style + "\x00" + replica)
//
// with base and replica in decimal. It lies in [0, 2^32), valid for every
// generator, and depends on nothing but its arguments: not on the order of
// the grid, the shard, or the other subjects and styles.
func DeriveSeed(base int64, subject, style string, replica int) int64 {
	h := sha256.Sum256([]byte("sdpipe-grid-seed/v1\x00" + strconv.FormatInt(base, 10) + "\x00" + subject + "\x00" + style + "\x00" + strconv.Itoa(replica)))
	return int64(binary.BigEndian.Uint32(h[:4]))
}

// ItemKey identifies a cell of the grid: 16 hex digits of
// sha256("sdpipe-grid-item/v1\x00" + subject + "\x00" + style + "\x00" + replica).
func ItemKey(subject, style string, replica int) string {
	h := sha256.Sum256([]byte("sdpipe-grid-item/v1\x00" + subject + "\x00" + style + "\x00" + strconv.Itoa(replica)))
	return hex.EncodeToString(h[:8])
}

// slug makes a short file-name-safe form of s; the key in the name keeps
// names unique where slugs collide.
func slug(s string) string {
	var b strings.Builder
	dash := false
	for _, r := range strings.ToLower(s) {
		if r < 128 && (unicode.IsLetter(r) || unicode.IsDigit(r)) {
			b.WriteRune(r)
			dash = false
		} else if !dash && b.Len() > 0 {
			b.WriteByte('-')
			dash = true
		}
		if b.Len() >= 40 {
			break
		}
	}
	out := strings.TrimSuffix(b.String(), "-")
	if out == "" {
		out = "x"
	}
	return out
}
