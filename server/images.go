package server

import (
	"bytes"
	"encoding/base64"
	"image"
	_ "image/gif" // init images may be GIF, JPEG or PNG
	_ "image/jpeg"
	_ "image/png"
	"strings"

	xdraw "golang.org/x/image/draw"
)

// decodeImage decodes a base64 image (optionally a data: URL), checks its
// size before decoding the pixels, and resizes it to width × height (0
// takes the image's, rounded down to a multiple of 8).
func (s *Server) decodeImage(param, b64 string, width, height int) (image.Image, error) {
	if strings.HasPrefix(b64, "data:") {
		_, rest, ok := strings.Cut(b64, ",")
		if !ok {
			return nil, badRequest(param, "%s: malformed data URL", param)
		}
		b64 = rest
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		if raw, err = base64.RawStdEncoding.DecodeString(b64); err != nil {
			return nil, badRequest(param, "%s: bad base64: %v", param, err)
		}
	}
	return s.decodeImageBytes(param, raw, width, height)
}

// decodeImageBytes is decodeImage for an image's bytes.
func (s *Server) decodeImageBytes(param string, raw []byte, width, height int) (image.Image, error) {
	cfg, format, err := image.DecodeConfig(bytes.NewReader(raw))
	if err != nil {
		return nil, badRequest(param, "%s: not a PNG, JPEG or GIF image: %v", param, err)
	}
	if cfg.Width < 8 || cfg.Height < 8 || cfg.Width > s.cfg.MaxSize || cfg.Height > s.cfg.MaxSize {
		return nil, badRequest(param, "%s: image is %dx%d, want sides in [8, %d]", param, cfg.Width, cfg.Height, s.cfg.MaxSize)
	}
	img, _, err := image.Decode(bytes.NewReader(raw))
	if err != nil {
		return nil, badRequest(param, "%s: decoding the %s image: %v", param, format, err)
	}
	if width == 0 {
		width = cfg.Width / 8 * 8
	}
	if height == 0 {
		height = cfg.Height / 8 * 8
	}
	if width < 8 || height < 8 || width > s.cfg.MaxSize || height > s.cfg.MaxSize || width%8 != 0 || height%8 != 0 {
		return nil, badRequest("width", "width and height: %dx%d must be multiples of 8 from 8 to %d (this server's largest size)", width, height, s.cfg.MaxSize)
	}
	b := img.Bounds()
	if b.Dx() == width && b.Dy() == height {
		return img, nil
	}
	dst := image.NewNRGBA(image.Rect(0, 0, width, height))
	xdraw.BiLinear.Scale(dst, dst.Bounds(), img, b, xdraw.Src, nil)
	return dst, nil
}
