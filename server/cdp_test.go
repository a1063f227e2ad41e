package server

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// cdp is a minimal Chrome DevTools Protocol client over Chromium's
// --remote-debugging-pipe (file descriptors 3 and 4, messages ended by a
// NUL byte): enough to drive a page by real input events and take
// screenshots, with the standard library only.
type cdp struct {
	t       *testing.T
	cmd     *exec.Cmd
	w       io.WriteCloser
	mu      sync.Mutex
	next    int
	waiting map[int]chan cdpReply
	events  chan cdpEvent
	session string
}

type cdpReply struct {
	Result json.RawMessage
	Error  *struct {
		Code    int
		Message string
	}
}

type cdpEvent struct {
	Method string
	Params json.RawMessage
}

// startCDP starts headless Chromium with the pipe and attaches to its page.
func startCDP(t *testing.T, bin string) *cdp {
	t.Helper()
	toChrome, chromeIn, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	chromeOut, fromChrome, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	// The profile is not a t.TempDir: Chromium's helper processes may
	// still write to it for a moment after the browser has gone, and
	// TempDir's cleanup fails the test on a folder that is not empty.
	profile, err := os.MkdirTemp("", "sdpipe-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--no-first-run", "--hide-scrollbars", "--remote-debugging-pipe", "--user-data-dir="+profile, "about:blank")
	cmd.ExtraFiles = []*os.File{toChrome, fromChrome} // fd 3: Chromium reads; fd 4: it writes
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) } // the browser and its helpers
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	toChrome.Close()
	fromChrome.Close()
	c := &cdp{t: t, cmd: cmd, w: chromeIn, waiting: map[int]chan cdpReply{}, events: make(chan cdpEvent, 256)}
	t.Cleanup(func() {
		chromeIn.Close() // Chromium exits when its pipe closes
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
		}
		cancel() // kills the process group: helpers that outlived the browser too
		<-exited
		chromeOut.Close()
		for i := 0; ; i++ {
			err := os.RemoveAll(profile)
			if err == nil || i == 20 {
				if err != nil {
					t.Logf("chromium profile %s left behind: %v", profile, err)
				}
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	go c.read(bufio.NewReader(chromeOut))
	var targets struct {
		TargetInfos []struct{ TargetID, Type string } `json:"targetInfos"`
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		c.call("Target.getTargets", nil, &targets)
		if len(targets.TargetInfos) > 0 && targets.TargetInfos[0].Type == "page" || time.Now().After(deadline) {
			break
		}
	}
	var page string
	for _, ti := range targets.TargetInfos {
		if ti.Type == "page" {
			page = ti.TargetID
		}
	}
	if page == "" {
		t.Fatalf("no page target in %+v", targets)
	}
	var att struct{ SessionID string }
	c.call("Target.attachToTarget", map[string]any{"targetId": page, "flatten": true}, &att)
	c.session = att.SessionID
	c.call("Page.enable", nil, nil)
	c.call("Runtime.enable", nil, nil)
	return c
}

func (c *cdp) read(r *bufio.Reader) {
	for {
		msg, err := r.ReadBytes(0)
		if err != nil {
			return
		}
		var m struct {
			ID     int
			Method string
			Params json.RawMessage
			cdpReply
		}
		if json.Unmarshal(msg[:len(msg)-1], &m) != nil {
			continue
		}
		if m.Method != "" {
			select {
			case c.events <- cdpEvent{m.Method, m.Params}:
			default:
			}
			continue
		}
		c.mu.Lock()
		ch := c.waiting[m.ID]
		delete(c.waiting, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m.cdpReply
		}
	}
}

// call sends a command (to the page's session once attached) and decodes
// its result into out.
func (c *cdp) call(method string, params any, out any) {
	c.t.Helper()
	if params == nil {
		params = map[string]any{}
	}
	c.mu.Lock()
	c.next++
	id := c.next
	ch := make(chan cdpReply, 1)
	c.waiting[id] = ch
	c.mu.Unlock()
	msg := map[string]any{"id": id, "method": method, "params": params}
	if c.session != "" && method != "Target.getTargets" && method != "Target.attachToTarget" && method != "Browser.setDownloadBehavior" && method != "Browser.grantPermissions" {
		msg["sessionId"] = c.session
	}
	b, _ := json.Marshal(msg)
	if _, err := c.w.Write(append(b, 0)); err != nil {
		c.t.Fatalf("cdp %s: %v", method, err)
	}
	select {
	case r := <-ch:
		if r.Error != nil {
			c.t.Fatalf("cdp %s: %s", method, r.Error.Message)
		}
		if out != nil {
			if err := json.Unmarshal(r.Result, out); err != nil {
				c.t.Fatalf("cdp %s: %v", method, err)
			}
		}
	case <-time.After(60 * time.Second):
		c.t.Fatalf("cdp %s: no answer", method)
	}
}

// eval evaluates a JavaScript expression (awaiting a promise) and decodes
// its value into out.
func (c *cdp) eval(expr string, out any) {
	c.t.Helper()
	var r struct {
		Result struct {
			Value json.RawMessage
		}
		ExceptionDetails *struct{ Text string }
	}
	c.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true, "awaitPromise": true}, &r)
	if r.ExceptionDetails != nil {
		c.t.Fatalf("eval %s: %s", expr, r.ExceptionDetails.Text)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result.Value, out); err != nil {
			c.t.Fatalf("eval %s: %v (%s)", expr, err, r.Result.Value)
		}
	}
}

// viewport sets the window's CSS size (mobile: a phone's touch viewport).
func (c *cdp) viewport(w, h int, mobile bool) {
	c.call("Emulation.setDeviceMetricsOverride", map[string]any{"width": w, "height": h, "deviceScaleFactor": 1, "mobile": mobile}, nil)
}

// navigate loads url and waits for the load event.
func (c *cdp) navigate(url string) {
	c.t.Helper()
	for len(c.events) > 0 {
		<-c.events
	}
	c.call("Page.navigate", map[string]any{"url": url}, nil)
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev := <-c.events:
			if ev.Method == "Page.loadEventFired" {
				return
			}
		case <-timeout:
			c.t.Fatalf("%s did not load", url)
		}
	}
}

// center returns the middle of an element in CSS pixels, scrolled into view.
func (c *cdp) center(selector string) (x, y float64) {
	c.t.Helper()
	var p struct{ X, Y float64 }
	c.eval(fmt.Sprintf(`(() => { const e = document.querySelector(%q); if (!e) throw new Error("no element %s");
		e.scrollIntoView({block: "center"}); const r = e.getBoundingClientRect(); return {x: r.x + r.width/2, y: r.y + r.height/2}; })()`, selector, selector), &p)
	return p.X, p.Y
}

// click presses and releases the left mouse button on an element.
func (c *cdp) click(selector string) {
	c.t.Helper()
	x, y := c.center(selector)
	for _, typ := range []string{"mouseMoved", "mousePressed", "mouseReleased"} {
		c.call("Input.dispatchMouseEvent", map[string]any{"type": typ, "x": x, "y": y, "button": "left", "clickCount": 1}, nil)
	}
}

// tap touches an element, as a phone's user does.
func (c *cdp) tap(selector string) {
	c.t.Helper()
	x, y := c.center(selector)
	pt := []map[string]any{{"x": x, "y": y}}
	c.call("Input.dispatchTouchEvent", map[string]any{"type": "touchStart", "touchPoints": pt}, nil)
	c.call("Input.dispatchTouchEvent", map[string]any{"type": "touchEnd", "touchPoints": []any{}}, nil)
}

// typeText sends key events for each character to the focused element.
func (c *cdp) typeText(s string) {
	for _, r := range s {
		c.call("Input.dispatchKeyEvent", map[string]any{"type": "keyDown", "text": string(r), "key": string(r), "unmodifiedText": string(r)}, nil)
		c.call("Input.dispatchKeyEvent", map[string]any{"type": "keyUp", "key": string(r)}, nil)
	}
}

// backspace presses Backspace n times.
func (c *cdp) backspace(n int) {
	for range n {
		c.call("Input.dispatchKeyEvent", map[string]any{"type": "rawKeyDown", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8}, nil)
		c.call("Input.dispatchKeyEvent", map[string]any{"type": "keyUp", "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8}, nil)
	}
}

// screenshot captures the page, whole (its full height), as PNG bytes.
func (c *cdp) screenshot() []byte {
	c.t.Helper()
	var r struct{ Data []byte }
	c.call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &r)
	return r.Data
}
