package sd

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"github.com/sdpipe/sdpipe/internal/webp"
	"hash/crc32"
	"image"
	"image/png"
	"io"
	"strconv"
	"strings"
)

// Infotext returns the AUTOMATIC1111 "parameters" text for one image of a
// resolved request (Result.Request), which the tools that read A1111 PNGs
// understand; model names the model ("" leaves it out). Result.Infotexts
// holds it for each image:
//
//	a red fox
//	Negative prompt: blurry
//	Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model: sd15, RNG: numpy, Version: sdpipe
func Infotext(r Request, seed int64, model string) string {
	return infotext(r, seed, model, "")
}

// infotext is Infotext with A1111's "Lora hashes" (Model.LoRAHashes; ""
// leaves them out).
func infotext(r Request, seed int64, model, loraHashes string) string {
	var b strings.Builder
	b.WriteString(r.Prompt)
	if r.NegativePrompt != "" {
		b.WriteString("\nNegative prompt: ")
		b.WriteString(r.NegativePrompt)
	}
	fields := [][2]string{
		{"Steps", strconv.Itoa(r.Steps)},
		{"Sampler", r.Scheduler},
	}
	if g := r.GuidanceScale; g != nil { // a resolved request always has one
		fields = append(fields, [2]string{"CFG scale", strconv.FormatFloat(*g, 'g', -1, 64)})
	}
	fields = append(fields, [][2]string{
		{"Seed", strconv.FormatInt(seed, 10)},
		{"Size", fmt.Sprintf("%dx%d", r.Width, r.Height)},
	}...)
	if model != "" {
		fields = append(fields, [2]string{"Model", model})
	}
	if loraHashes != "" {
		fields = append(fields, [2]string{"Lora hashes", loraHashes})
	}
	if r.InitImage != nil {
		fields = append(fields, [2]string{"Denoising strength", strconv.FormatFloat(r.Strength, 'g', -1, 64)})
	}
	if r.Mask != nil {
		fields = append(fields, r.Inpaint.Fields()...)
	}
	if r.Eta != 0 {
		fields = append(fields, [2]string{"Eta", strconv.FormatFloat(r.Eta, 'g', -1, 64)})
	}
	if r.GuidanceRescale != 0 {
		fields = append(fields, [2]string{"CFG Rescale", strconv.FormatFloat(r.GuidanceRescale, 'g', -1, 64)})
	}
	fields = append(fields, [2]string{"RNG", r.Generator.String()}, [2]string{"Version", "sdpipe"})
	b.WriteString("\n")
	for i, f := range fields {
		if i > 0 {
			b.WriteString(", ")
		}
		v := f[1]
		if strings.ContainsAny(v, ",:\"") { // quoted as A1111 does
			v = strconv.Quote(v)
		}
		b.WriteString(f[0] + ": " + v)
	}
	return b.String()
}

// EncodePNG writes img as PNG with params (an Infotext) stored in a
// "parameters" text chunk (tEXt when the text is Latin-1, iTXt with UTF-8
// otherwise), where AUTOMATIC1111 and the tools around it look for
// generation parameters. Result.EncodePNG writes one image of a result
// with its own.
func EncodePNG(w io.Writer, img image.Image, params string) error {
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		return fmt.Errorf("sd: png: %w", err)
	}
	b := buf.Bytes()
	const ihdrEnd = 8 + 8 + 13 + 4 // signature, IHDR header, data, crc
	if len(b) < ihdrEnd {
		return fmt.Errorf("sd: png: short encoding")
	}
	if _, err := w.Write(b[:ihdrEnd]); err != nil {
		return err
	}
	if params != "" {
		if err := writeTextChunk(w, "parameters", params); err != nil {
			return err
		}
	}
	_, err := w.Write(b[ihdrEnd:])
	return err
}

// EncodeWebP writes img as a lossless WebP file (VP8L, every pixel
// exact; no metadata: WebP has no place A1111's tools read parameters
// from).
func EncodeWebP(w io.Writer, img image.Image) error {
	if err := webp.Encode(w, img); err != nil {
		return fmt.Errorf("sd: %w", err)
	}
	return nil
}

func writeTextChunk(w io.Writer, key, text string) error {
	var data []byte
	typ := "tEXt"
	latin1 := true
	for _, r := range text {
		if r > 0xff || r == 0 {
			latin1 = false
			break
		}
	}
	if latin1 {
		data = append([]byte(key), 0)
		for _, r := range text {
			data = append(data, byte(r))
		}
	} else {
		typ = "iTXt"
		data = append([]byte(key), 0, 0, 0, 0, 0) // null, no compression, method, empty language, empty translated keyword
		data = append(data, strings.ToValidUTF8(strings.ReplaceAll(text, "\x00", ""), "\uFFFD")...)
	}
	var hdr [8]byte
	binary.BigEndian.PutUint32(hdr[:4], uint32(len(data)))
	copy(hdr[4:], typ)
	crc := crc32.NewIEEE()
	crc.Write(hdr[4:])
	crc.Write(data)
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc.Sum32())
	for _, p := range [][]byte{hdr[:], data, sum[:]} {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// ReadPNGParameters returns the "parameters" text of a PNG written by
// EncodePNG (or by AUTOMATIC1111), or "" when it has none.
func ReadPNGParameters(r io.Reader) (string, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return "", err
	}
	if len(b) < 8 || string(b[:8]) != "\x89PNG\r\n\x1a\n" {
		return "", fmt.Errorf("sd: not a PNG")
	}
	for p := 8; p+12 <= len(b); {
		n := int(binary.BigEndian.Uint32(b[p:]))
		if n < 0 || p+12+n > len(b) {
			return "", fmt.Errorf("sd: png: truncated chunk")
		}
		typ, data := string(b[p+4:p+8]), b[p+8:p+8+n]
		p += 12 + n
		key, rest, ok := bytes.Cut(data, []byte{0})
		if !ok || string(key) != "parameters" {
			continue
		}
		switch typ {
		case "tEXt":
			rs := make([]rune, len(rest))
			for i, c := range rest {
				rs[i] = rune(c)
			}
			return string(rs), nil
		case "iTXt":
			if len(rest) < 2 || rest[0] != 0 {
				return "", fmt.Errorf("sd: png: compressed iTXt not supported")
			}
			parts := bytes.SplitN(rest[2:], []byte{0}, 3)
			if len(parts) != 3 {
				return "", fmt.Errorf("sd: png: malformed iTXt")
			}
			return string(parts[2]), nil
		}
	}
	return "", nil
}
