package server

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSlack is a local stand-in for Slack: a response_url and the Web API
// calls of an upload, recording what the server sends.
type fakeSlack struct {
	*httptest.Server
	mu       sync.Mutex
	messages []map[string]any // posted to the response_url
	uploads  [][]byte         // files uploaded
	complete []map[string]any // files.completeUploadExternal bodies
	auth     []string
}

func newFakeSlack(t *testing.T) *fakeSlack {
	f := &fakeSlack{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /response", func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		f.mu.Lock()
		f.messages = append(f.messages, m)
		f.mu.Unlock()
		_, _ = io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /api/files.getUploadURLExternal", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		_ = r.ParseForm()
		if r.Form.Get("filename") == "" || r.Form.Get("length") == "" {
			_, _ = io.WriteString(w, `{"ok":false,"error":"invalid_arguments"}`)
			return
		}
		fmt.Fprintf(w, `{"ok":true,"upload_url":%q,"file_id":"F123"}`, f.URL+"/upload/F123")
	})
	mux.HandleFunc("POST /upload/F123", func(w http.ResponseWriter, r *http.Request) {
		file, _, err := r.FormFile("file")
		if err != nil {
			http.Error(w, err.Error(), 400)
			return
		}
		b, _ := io.ReadAll(file)
		f.mu.Lock()
		f.uploads = append(f.uploads, b)
		f.mu.Unlock()
	})
	mux.HandleFunc("POST /api/files.completeUploadExternal", func(w http.ResponseWriter, r *http.Request) {
		var m map[string]any
		_ = json.NewDecoder(r.Body).Decode(&m)
		f.mu.Lock()
		f.complete = append(f.complete, m)
		f.auth = append(f.auth, r.Header.Get("Authorization"))
		f.mu.Unlock()
		_, _ = io.WriteString(w, `{"ok":true}`)
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

// slackSign signs a body as Slack does.
func slackSign(secret string, ts int64, body string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	fmt.Fprintf(mac, "v0:%d:%s", ts, body)
	return "v0=" + hex.EncodeToString(mac.Sum(nil))
}

func slackCommand(t *testing.T, base, secret string, ts int64, body string) response {
	t.Helper()
	return do(t, t.Context(), http.MethodPost, base+"/slack/command", body,
		"Content-Type", "application/x-www-form-urlencoded",
		"X-Slack-Request-Timestamp", strconv.FormatInt(ts, 10),
		"X-Slack-Signature", slackSign(secret, ts, body))
}

func TestSlackCommand(t *testing.T) {
	const secret = "8f742231b10e8888abcd99yyyzzz85a5"
	slack := newFakeSlack(t)
	_, ts := newServer(t, Config{SlackSigningSecret: secret, FastSteps: 3, ModelName: "tiny", Token: "api-token"})
	form := url.Values{"command": {"/muse"}, "text": {"a lighthouse at dusk"}, "team_id": {"T1"}, "user_id": {"U1"},
		"channel_id": {"C1"}, "response_url": {slack.URL + "/response"}}.Encode()

	start := time.Now()
	r := slackCommand(t, ts.URL, secret, time.Now().Unix(), form)
	if r.code != http.StatusOK || time.Since(start) > 3*time.Second {
		t.Fatalf("command: %d after %v: %s", r.code, time.Since(start), r.body)
	}
	waitFor(t, "the image on the response_url", func() bool {
		slack.mu.Lock()
		defer slack.mu.Unlock()
		return len(slack.messages) > 0
	})
	msg := slack.messages[0]
	blocks, _ := msg["blocks"].([]any)
	if len(blocks) == 0 {
		t.Fatalf("message %v has no blocks", msg)
	}
	link, _ := blocks[0].(map[string]any)["image_url"].(string)
	img := get(t, link)
	if img.code != http.StatusOK || img.header.Get("Content-Type") != "image/png" {
		t.Errorf("image block URL %q: %d", link, img.code)
	}

	// refused: a replay, an old timestamp, a wrong signature, none
	if r := slackCommand(t, ts.URL, secret, time.Now().Unix()-10*60, form); r.code != http.StatusUnauthorized {
		t.Errorf("a 10-minute-old request: %d", r.code)
	}
	now := time.Now().Unix()
	form2 := strings.Replace(form, "dusk", "dawn", 1)
	if r := slackCommand(t, ts.URL, secret, now, form2); r.code != http.StatusOK {
		t.Errorf("second command: %d %s", r.code, r.body)
	}
	if r := slackCommand(t, ts.URL, secret, now, form2); r.code != http.StatusUnauthorized || !strings.Contains(string(r.body), "replay") {
		t.Errorf("the same signed request again: %d %s", r.code, r.body)
	}
	if r := slackCommand(t, ts.URL, "wrong secret", time.Now().Unix(), form); r.code != http.StatusUnauthorized {
		t.Errorf("wrong signature: %d", r.code)
	}
	if r := post(t, ts.URL+"/slack/command", form, "Content-Type", "application/x-www-form-urlencoded"); r.code != http.StatusUnauthorized {
		t.Errorf("unsigned: %d", r.code)
	}
	if r := slackCommand(t, ts.URL, secret, time.Now().Unix(), "command=%2Fmuse&text="); r.code != http.StatusOK || !strings.Contains(string(r.body), "Usage") {
		t.Errorf("empty prompt: %d %s", r.code, r.body)
	}
}

func TestSlackUpload(t *testing.T) {
	const secret = "s3cret"
	slack := newFakeSlack(t)
	_, ts := newServer(t, Config{SlackSigningSecret: secret, SlackBotToken: "xoxb-1", SlackAPIURL: slack.URL + "/api", FastSteps: 3})
	form := url.Values{"command": {"/muse"}, "text": {"a red fox"}, "channel_id": {"C9"}, "response_url": {slack.URL + "/response"}}.Encode()
	if r := slackCommand(t, ts.URL, secret, time.Now().Unix(), form); r.code != http.StatusOK {
		t.Fatalf("command: %d %s", r.code, r.body)
	}
	waitFor(t, "the upload", func() bool {
		slack.mu.Lock()
		defer slack.mu.Unlock()
		return len(slack.complete) > 0
	})
	slack.mu.Lock()
	defer slack.mu.Unlock()
	if len(slack.uploads) != 1 || !strings.HasPrefix(string(slack.uploads[0]), "\x89PNG") {
		t.Errorf("uploaded %d files", len(slack.uploads))
	}
	if c := slack.complete[0]; c["channel_id"] != "C9" || !strings.Contains(fmt.Sprint(c["initial_comment"]), "a red fox") {
		t.Errorf("completeUploadExternal %v", c)
	}
	for _, a := range slack.auth {
		if a != "Bearer xoxb-1" {
			t.Errorf("Authorization %q", a)
		}
	}
}
