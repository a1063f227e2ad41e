package server

import (
	"image"

	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"github.com/sdpipe/sdpipe/sd"
	"net/http"
	"time"
)

// streamOpenAI answers an OpenAI images request with stream: true as
// server-sent events, the shape the SDKs parse: partial_images previews
// while the images denoise ("image_generation.partial_image", or
// "image_edit.partial_image" for an edit), then one completed event per
// image. An error after the stream began comes as an event with an
// "error" object, which the SDKs raise.
func (s *Server) streamOpenAI(w http.ResponseWriter, r *http.Request, sp *spec, o *openAIOutput) {
	t, ctx, err := s.admit(r.Context(), identity(r), apiOpenAI, sp)
	if err != nil {
		s.writeError(w, err)
		return
	}
	type partial struct {
		img  image.Image
		w, h int
	}
	partials := make(chan partial, o.partials)
	sent := 0 // partial images taken, counted on the engine's goroutine
	t.onStep = func(req int, ev sd.Progress) {
		// partial k of P at step k/(P+1) of the first request's schedule
		if req != 0 || ev.Preview == nil || sent >= o.partials || ev.Step >= ev.Total || ev.Step*(o.partials+1) < (sent+1)*ev.Total {
			return
		}
		t.mu.Lock()
		r := t.resolved[0]
		t.mu.Unlock()
		select {
		case partials <- partial{ev.Preview, r.Width, r.Height}:
			sent++
		default:
		}
	}
	go s.execute(ctx, t)
	kind := "image_generation"
	if o.edit {
		kind = "image_edit"
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no") // nginx: pass events on at once
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	send := func(event string, v any) {
		_ = rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		b, _ := json.Marshal(v)
		_, _ = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		_ = rc.Flush()
	}
	_ = rc.Flush()

	created := time.Now().Unix()
	index := 0
	sendPartial := func(p partial) {
		b, _, err := encodeImage(scaled(p.img, p.w, p.h), o, "")
		if err != nil {
			return
		}
		send(kind+".partial_image", map[string]any{
			"type": kind + ".partial_image", "b64_json": base64.StdEncoding.EncodeToString(b),
			"created_at": created, "size": fmt.Sprintf("%dx%d", p.w, p.h),
			"quality": o.respQuality(), "background": "opaque", "output_format": o.format,
			"partial_image_index": index,
		})
		index++
	}
	for done := false; !done; {
		select {
		case p := <-partials:
			sendPartial(p)
		case <-t.done:
			done = true
		case <-r.Context().Done():
			<-t.done // the client left: its context cancels the task
			return
		}
	}
	for len(partials) > 0 { // the ones taken just before the end
		sendPartial(<-partials)
	}
	if t.err != nil {
		e := asAPIError(t.err)
		if e.cause != nil {
			s.log.Error("server: stream", "err", e.cause)
		}
		send("error", map[string]any{"type": "error", "error": map[string]any{"message": e.Msg, "type": e.Type, "param": nilIfEmpty(e.Param), "code": e.Status}})
		return
	}
	data, err := s.openAIData(r.WithContext(context.WithoutCancel(r.Context())), t, o)
	if err != nil {
		e := asAPIError(err)
		send("error", map[string]any{"type": "error", "error": map[string]any{"message": e.Msg, "type": e.Type, "code": e.Status}})
		return
	}
	for _, d := range data {
		ev := map[string]any{
			"type": kind + ".completed", "created_at": created, "size": t.size(),
			"quality": o.respQuality(), "background": "opaque", "output_format": o.format,
		}
		for k, v := range d {
			if k != "revised_prompt" {
				ev[k] = v
			}
		}
		send(kind+".completed", ev)
	}
	s.met.served(len(data))
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}
