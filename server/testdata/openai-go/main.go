// Command openai-go drives an sdpipe server with the official OpenAI Go
// SDK, unchanged (only the base URL points at the server), and exits
// non-zero saying what failed. server's TestOpenAIGoSDK runs it; it is a
// module of its own so that the SDK stays out of sdpipe's go.mod.
//
//	go run . http://127.0.0.1:7860
//	go run . http://127.0.0.1:7860 models a b  # a server with a models folder holding a and b
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"image"
	"image/color"
	_ "image/jpeg" // decodes the jpeg output
	"image/png"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
)

func main() {
	run := run
	if len(os.Args) > 2 && os.Args[2] == "models" {
		run = func(ctx context.Context, base string) error { return runModels(ctx, base, os.Args[3:]) }
	}
	if err := run(context.Background(), os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "openai-go:", err)
		os.Exit(1)
	}
	fmt.Println("openai-go: all checks passed")
}

func decode(b64 string) (image.Image, string, error) {
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, "", err
	}
	return image.Decode(bytes.NewReader(raw))
}

func run(ctx context.Context, base string) error {
	c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))

	// generate: n, size, quality
	res, err := c.Images.Generate(ctx, openai.ImageGenerateParams{
		Prompt: "a lighthouse at dusk", Model: openai.ImageModelGPTImage1, N: openai.Int(2),
		Size: "64x64", Quality: openai.ImageGenerateParamsQualityLow,
	})
	if err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	if len(res.Data) != 2 {
		return fmt.Errorf("generate: %d images, want 2", len(res.Data))
	}
	for _, d := range res.Data {
		img, format, err := decode(d.B64JSON)
		if err != nil || format != "png" || img.Bounds().Dx() != 64 {
			return fmt.Errorf("generate: image %v %q %v", err, format, img.Bounds())
		}
	}
	// jpeg at a compression
	res, err = c.Images.Generate(ctx, openai.ImageGenerateParams{
		Prompt: "a red fox", Size: "64x64", OutputFormat: openai.ImageGenerateParamsOutputFormatJPEG, OutputCompression: openai.Int(60),
	})
	if err != nil {
		return fmt.Errorf("generate jpeg: %w", err)
	}
	if _, format, err := decode(res.Data[0].B64JSON); err != nil || format != "jpeg" {
		return fmt.Errorf("generate jpeg: %q %v", format, err)
	}
	// stream with partial images
	stream := c.Images.GenerateStreaming(ctx, openai.ImageGenerateParams{
		Prompt: "a blue square", Size: "64x64", Quality: openai.ImageGenerateParamsQualityHigh, PartialImages: openai.Int(2),
	})
	partials, completed := 0, 0
	for stream.Next() {
		ev := stream.Current()
		switch ev.Type {
		case "image_generation.partial_image":
			partials++
		case "image_generation.completed":
			if _, _, err := decode(ev.AsImageGenerationCompleted().B64JSON); err != nil {
				return fmt.Errorf("stream: completed image: %w", err)
			}
			completed++
		}
	}
	if err := stream.Err(); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if partials != 2 || completed != 1 {
		return fmt.Errorf("stream: %d partial and %d completed events, want 2 and 1", partials, completed)
	}
	// edit: one image, no mask
	src := image.NewNRGBA(image.Rect(0, 0, 64, 64))
	for i := range src.Pix {
		src.Pix[i] = uint8(i)
	}
	src.Set(0, 0, color.NRGBA{255, 0, 0, 255})
	var pb bytes.Buffer
	_ = png.Encode(&pb, src)
	res, err = c.Images.Edit(ctx, openai.ImageEditParams{
		Prompt: "make it red", Image: openai.ImageEditParamsImageUnion{OfFile: openai.File(bytes.NewReader(pb.Bytes()), "in.png", "image/png")},
		Size: "64x64",
	})
	if err != nil {
		return fmt.Errorf("edit: %w", err)
	}
	if _, _, err := decode(res.Data[0].B64JSON); err != nil {
		return fmt.Errorf("edit: %w", err)
	}
	// the error envelope, and a size error that names the limit
	_, err = c.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "x", Size: openai.ImageGenerateParamsSize1024x1024})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "size" || !strings.Contains(apiErr.Message, "limit") {
		return fmt.Errorf("1024x1024: %v, want a 400 *openai.Error about size naming the limit", err)
	}
	// models
	page, err := c.Models.List(ctx)
	if err != nil || len(page.Data) != 1 {
		return fmt.Errorf("models: %v", err)
	}
	return nil
}

// runModels checks a server with several models: the list names them, the
// model field chooses the one that runs (the server says which in its
// Sdpipe-Model header), and an unknown model is OpenAI's 400 on param
// "model" (404 from the models endpoint).
func runModels(ctx context.Context, base string, names []string) error {
	c := openai.NewClient(option.WithBaseURL(base+"/v1/"), option.WithAPIKey("sk-test"), option.WithMaxRetries(0))
	page, err := c.Models.List(ctx)
	if err != nil {
		return fmt.Errorf("models: %w", err)
	}
	var ids []string
	for _, m := range page.Data {
		ids = append(ids, m.ID)
	}
	for _, n := range names {
		if !slices.Contains(ids, n) {
			return fmt.Errorf("models: %v lacks %q", ids, n)
		}
		if m, err := c.Models.Get(ctx, n); err != nil || m.ID != n {
			return fmt.Errorf("models.get %q: %v", n, err)
		}
		var resp *http.Response
		res, err := c.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "a lighthouse", Model: openai.ImageModel(n), Size: "64x64", Quality: openai.ImageGenerateParamsQualityLow},
			option.WithResponseInto(&resp))
		if err != nil {
			return fmt.Errorf("generate with model %q: %w", n, err)
		}
		if got := resp.Header.Get("Sdpipe-Model"); got != n || len(res.Data) != 1 {
			return fmt.Errorf("generate with model %q ran %q", n, got)
		}
	}
	_, err = c.Images.Generate(ctx, openai.ImageGenerateParams{Prompt: "x", Model: "no-such-model", Size: "64x64"})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != 400 || apiErr.Param != "model" || !strings.Contains(apiErr.Message, "no-such-model") {
		return fmt.Errorf("an unknown model: %v, want a 400 *openai.Error on param model", err)
	}
	if _, err = c.Models.Get(ctx, "no-such-model"); !errors.As(err, &apiErr) || apiErr.StatusCode != 404 {
		return fmt.Errorf("models.get of an unknown model: %v, want a 404", err)
	}
	return nil
}
