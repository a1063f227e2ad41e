package sd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
)

// ModelIndex is a parsed model_index.json: which pipeline class saved the
// folder and which library and class each component came from. A ModelIndex
// is a plain value, safe for concurrent reads.
type ModelIndex struct {
	// ClassName is "_class_name", e.g. "OnnxStableDiffusionPipeline" as the
	// legacy diffusers exporter writes it.
	ClassName string
	// DiffusersVersion is "_diffusers_version", when present.
	DiffusersVersion string
	// Components maps each component entry (a [library, class] pair such as
	// "unet": ["diffusers", "OnnxRuntimeModel"]) to its values. Entries
	// written as [null, null] (e.g. an absent safety_checker) are kept with
	// empty fields. Other keys, such as requires_safety_checker, are left out.
	Components map[string]IndexEntry
}

// IndexEntry is one component of model_index.json.
type IndexEntry struct {
	Library string // e.g. "diffusers", "transformers"; "" for null
	Class   string // e.g. "OnnxRuntimeModel", "CLIPTokenizer"; "" for null
}

// parseIndex parses the contents of model_index.json.
func parseIndex(data []byte) (ModelIndex, error) {
	var raw map[string]json.RawMessage
	if err := unmarshalJSON(data, &raw); err != nil {
		if _, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			return ModelIndex{}, &problem{msg: "not a JSON object", err: err}
		}
		return ModelIndex{}, err
	}
	if raw == nil {
		return ModelIndex{}, errors.New("not a JSON object")
	}
	idx := ModelIndex{Components: make(map[string]IndexEntry)}
	for k, v := range raw {
		switch k {
		case "_class_name", "_diffusers_version":
			var s string
			if err := json.Unmarshal(v, &s); err != nil {
				return ModelIndex{}, fmt.Errorf("%s is %s, want a string", k, v)
			}
			if k == "_class_name" {
				idx.ClassName = s
			} else {
				idx.DiffusersVersion = s
			}
			continue
		}
		if strings.HasPrefix(k, "_") {
			continue
		}
		var pair []*string
		if json.Unmarshal(v, &pair) != nil || len(pair) != 2 {
			continue // not a component entry (e.g. requires_safety_checker)
		}
		var e IndexEntry
		if pair[0] != nil {
			e.Library = *pair[0]
		}
		if pair[1] != nil {
			e.Class = *pair[1]
		}
		idx.Components[k] = e
	}
	return idx, nil
}

// readJSON reads the JSON file at path into v. A missing file gives an error
// matching fs.ErrNotExist; malformed JSON gives an error that says where.
func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fileError(err)
	}
	return unmarshalJSON(data, v)
}

// checkJSON checks that the file at path holds well-formed JSON, with errors
// as readJSON's.
func checkJSON(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fileError(err)
	}
	if json.Valid(data) {
		return nil
	}
	return unmarshalJSON(data, new(any))
}

// unmarshalJSON is json.Unmarshal with errors that give the line and column.
func unmarshalJSON(data []byte, v any) error {
	err := json.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		// Offset counts the offending byte.
		return &problem{msg: fmt.Sprintf("malformed JSON at %s: %v", position(data, se.Offset-1), err), err: err}
	case errors.As(err, &te):
		return &problem{msg: fmt.Sprintf("unexpected JSON at %s: %v", position(data, te.Offset), err), err: err}
	}
	return &problem{msg: "malformed JSON: " + err.Error(), err: err}
}

// position turns a byte offset into "line L, column C" (both from 1).
func position(data []byte, off int64) string {
	off = min(max(off, 0), int64(len(data)))
	before := data[:off]
	line := bytes.Count(before, []byte("\n")) + 1
	col := len(before) - bytes.LastIndexByte(before, '\n')
	return fmt.Sprintf("line %d, column %d", line, col)
}

// fileError words an error from opening or reading a file.
func fileError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return &problem{msg: "missing", err: err}
	case errors.Is(err, fs.ErrPermission):
		return &problem{msg: "permission denied", err: err}
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return &problem{msg: pe.Op + ": " + pe.Err.Error(), err: err}
	}
	return err
}
