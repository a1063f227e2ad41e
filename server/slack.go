package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Slack: a slash command ("/muse a lighthouse at dusk") answered with the
// image. POST /slack/command takes Slack's form, verifies its signature
// (X-Slack-Signature: "v0=" + hex HMAC-SHA256 of "v0:<timestamp>:<body>"
// under the app's signing secret; X-Slack-Request-Timestamp at most five
// minutes off, and each signature once), acknowledges at once (Slack wants
// an answer within 3 s), generates, and then posts the image: uploaded to
// the channel with the bot token when the server has one
// (files.getUploadURLExternal, the upload, files.completeUploadExternal),
// else to the command's response_url as an image block whose URL this
// server serves for an hour (response_format url's files).
//
// Without Config.SlackSigningSecret the endpoint is not there (404).

// DefaultSlackAPI is Slack's Web API.
const DefaultSlackAPI = "https://slack.com/api"

// slackWindow is how far a request's timestamp may be from the server's
// clock: Slack's own advice.
const slackWindow = 5 * time.Minute

func (s *Server) slackRoutes(open func(string, http.HandlerFunc)) {
	if s.cfg.SlackSigningSecret == "" {
		return
	}
	// Slack signs its requests instead of sending the bearer token
	open("POST /slack/command", s.handleSlack)
}

// slackReplay remembers the signatures of the window, so that a captured
// request cannot be sent again.
type slackReplay struct {
	mu   sync.Mutex
	seen map[string]time.Time
}

// first reports whether sig is new, and remembers it.
func (p *slackReplay) first(sig string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.seen == nil {
		p.seen = map[string]time.Time{}
	}
	for k, t := range p.seen {
		if now.Sub(t) > 2*slackWindow {
			delete(p.seen, k)
		}
	}
	if _, ok := p.seen[sig]; ok {
		return false
	}
	p.seen[sig] = now
	return true
}

// verifySlack checks a request's signature over body.
func (s *Server) verifySlack(r *http.Request, body []byte, now time.Time) error {
	ts, sig := r.Header.Get("X-Slack-Request-Timestamp"), r.Header.Get("X-Slack-Signature")
	if ts == "" || sig == "" {
		return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "missing X-Slack-Signature or X-Slack-Request-Timestamp"}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "X-Slack-Request-Timestamp is not a number"}
	}
	if d := now.Sub(time.Unix(sec, 0)); d > slackWindow || d < -slackWindow {
		return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: fmt.Sprintf("X-Slack-Request-Timestamp is %v off the server's clock (more than %v): refused as a replay", d.Round(time.Second), slackWindow)}
	}
	mac := hmac.New(sha256.New, []byte(s.cfg.SlackSigningSecret))
	fmt.Fprintf(mac, "v0:%s:", ts)
	mac.Write(body)
	want := "v0=" + hex.EncodeToString(mac.Sum(nil))
	if !hmac.Equal([]byte(sig), []byte(want)) {
		return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "X-Slack-Signature does not match the request"}
	}
	if !s.slackSeen.first(sig, now) {
		return &apiError{Status: http.StatusUnauthorized, Type: "authentication_error", Msg: "this signed request was already received: refused as a replay"}
	}
	return nil
}

func requireForm(r *http.Request) error {
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
		return &apiError{Status: http.StatusUnsupportedMediaType, Type: "invalid_request_error", Msg: "send Slack's slash-command form (application/x-www-form-urlencoded)"}
	}
	return nil
}

// slackMessage is an ephemeral answer to the command itself.
func slackMessage(w http.ResponseWriter, text string) {
	writeJSON(w, http.StatusOK, map[string]any{"response_type": "ephemeral", "text": text})
}

func (s *Server) handleSlack(w http.ResponseWriter, r *http.Request) {
	body, release, err := s.readBodyOf(w, r, requireForm)
	if err != nil {
		s.writeError(w, err)
		return
	}
	release()
	if err := s.verifySlack(r, body, time.Now()); err != nil {
		s.writeError(w, err)
		return
	}
	form, err := url.ParseQuery(string(body))
	if err != nil {
		s.writeError(w, badRequest("", "malformed form: %v", err))
		return
	}
	prompt := strings.TrimSpace(form.Get("text"))
	if prompt == "" {
		slackMessage(w, fmt.Sprintf("Usage: %s <prompt>, e.g. %s a lighthouse at dusk", form.Get("command"), form.Get("command")))
		return
	}
	respURL, channel := form.Get("response_url"), form.Get("channel_id")
	if respURL == "" && (s.cfg.SlackBotToken == "" || channel == "") {
		s.writeError(w, badRequest("response_url", "response_url is missing, and the server has no bot token to upload with"))
		return
	}
	sp, err := s.build(&common{prompt: prompt, quality: modeFast, names: map[string]string{"prompt": "text"}})
	if err != nil {
		slackMessage(w, "Sorry: "+asAPIError(err).Msg)
		return
	}
	// the work outlives the request, which Slack wants answered in 3 s
	t, ctx, err := s.admit(context.WithoutCancel(r.Context()), "slack-"+form.Get("team_id")+"-"+form.Get("user_id"), apiSlack, sp)
	if err != nil {
		slackMessage(w, "Sorry: "+asAPIError(err).Msg)
		return
	}
	host := r.Clone(context.WithoutCancel(r.Context())) // for the image URL
	go s.runSlack(ctx, t, host, respURL, channel, prompt)
	writeJSON(w, http.StatusOK, map[string]any{"response_type": "in_channel", "text": fmt.Sprintf("Painting “%s”…", prompt)})
}

// runSlack generates and posts the result, or the error, to Slack.
func (s *Server) runSlack(ctx context.Context, t *task, r *http.Request, respURL, channel, prompt string) {
	s.execute(ctx, t)
	pctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	if t.err != nil {
		err = s.slackPost(pctx, respURL, map[string]any{"response_type": "ephemeral", "replace_original": false, "text": "Sorry, that failed: " + asAPIError(t.err).Msg})
	} else {
		err = s.slackDeliver(pctx, t, r, respURL, channel, prompt)
	}
	if err != nil {
		s.log.Error("server: posting to Slack", "task", t.id, "err", err)
	}
}

func (s *Server) slackDeliver(ctx context.Context, t *task, r *http.Request, respURL, channel, prompt string) error {
	infos := s.imageInfos(t)
	if len(infos) == 0 {
		return fmt.Errorf("no image")
	}
	ii := infos[0]
	text := ii.infotext()
	png, _, err := encodeImage(ii.img, &openAIOutput{format: "png"}, text)
	if err != nil {
		return err
	}
	if s.cfg.SlackBotToken != "" && channel != "" {
		return s.slackUpload(ctx, channel, png, prompt, text)
	}
	link := s.files.put(r, png, "image/png")
	return s.slackPost(ctx, respURL, map[string]any{
		"response_type": "in_channel", "replace_original": false, "text": prompt,
		"blocks": []any{
			map[string]any{"type": "image", "image_url": link, "alt_text": prompt,
				"title": map[string]any{"type": "plain_text", "text": prompt}},
			map[string]any{"type": "context", "elements": []any{map[string]any{"type": "mrkdwn", "text": fmt.Sprintf("Seed %d · %s", ii.seed, ii.model)}}},
		},
	})
}

func (s *Server) slackAPI() string {
	return strings.TrimSuffix(cmpOr(s.cfg.SlackAPIURL, DefaultSlackAPI), "/")
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// slackPost posts a message to a response_url.
func (s *Server) slackPost(ctx context.Context, to string, msg any) error {
	b, _ := json.Marshal(msg)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, to, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return slackDo(req, nil)
}

// slackUpload uploads the image to the channel with the bot token, by
// Slack's external upload flow.
func (s *Server) slackUpload(ctx context.Context, channel string, png []byte, prompt, infotext string) error {
	form := url.Values{"filename": {"sdpipe.png"}, "length": {strconv.Itoa(len(png))}, "alt_text": {prompt}}
	var up struct {
		slackAnswer
		UploadURL string `json:"upload_url"`
		FileID    string `json:"file_id"`
	}
	if err := s.slackCall(ctx, "files.getUploadURLExternal", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()), &up); err != nil {
		return err
	}
	var mp bytes.Buffer
	mw := multipart.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("file", "sdpipe.png")
	_, _ = fw.Write(png)
	_ = mw.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, up.UploadURL, &mp)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", mw.FormDataContentType())
	if err := slackDo(req, nil); err != nil {
		return fmt.Errorf("uploading: %w", err)
	}
	files, _ := json.Marshal([]map[string]string{{"id": up.FileID, "title": prompt}})
	body, _ := json.Marshal(map[string]any{"files": json.RawMessage(files), "channel_id": channel, "initial_comment": infotext})
	var done slackAnswer
	return s.slackCall(ctx, "files.completeUploadExternal", "application/json; charset=utf-8", bytes.NewReader(body), &done)
}

// slackAnswer is what every answer of Slack's Web API says: whether it did
// what was asked, and if not, why.
type slackAnswer struct {
	OK    bool   `json:"ok"`
	Error string `json:"error"`
}

func (a *slackAnswer) answer() *slackAnswer { return a }

// slackCall posts body, of type contentType, to the Web API method with
// the bot token and decodes the answer into v; an answer that is not ok
// is an error.
func (s *Server) slackCall(ctx context.Context, method, contentType string, body io.Reader, v interface{ answer() *slackAnswer }) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.slackAPI()+"/"+method, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("Authorization", "Bearer "+s.cfg.SlackBotToken)
	if err := slackDo(req, v); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if a := v.answer(); !a.OK {
		return fmt.Errorf("%s: %s", method, a.Error)
	}
	return nil
}

// slackDo sends req and decodes a JSON answer into v (nil: any 2xx).
func slackDo(req *http.Request, v any) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
	}
	if v != nil {
		return json.Unmarshal(b, v)
	}
	return nil
}
