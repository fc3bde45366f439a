package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/shylock-go/shylock"
)

// chromium returns the path of a Chromium to drive, or "" if there is none.
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// TestServePage drives the web page in a real headless Chromium: until it has a valid API key it
// says it cannot see the locks and why; then it shows the locks with their holders, addresses
// ("(library)" for a lock taken through the library), start, tokens and a live countdown,
// follows changes by push, filters by prefix, and releases, extends and sets an expiry decades
// ahead behind a confirmation. A screenshot is saved as an artifact (go test -artifacts).
func TestServePage(t *testing.T) {
	browser := chromium()
	if browser == "" {
		t.Skip("no Chromium: install Debian's chromium package (the CI run does) to test the web page in a browser")
	}
	bin := build(t, "github.com/shylock-go/shylock/cmd/shylock")
	coll := collection(t)
	s := startServe(t, bin, serveEnv(), "--collection", coll.Name(), "--poll", "100ms")
	var held, other relukkoLock
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "lab/scope-1", "creator": "ci job 7"}`, &held)
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "rack/switch-4", "creator": "alice"}`, &other)
	library := shylock.New("rack/pdu-2", shylock.WithBackend(newMongo(t, coll)), shylock.WithOwner("build-7/4242"), shylock.WithTTL(time.Hour))
	if ok, err := library.TryAcquire(context.Background()); !ok || err != nil {
		t.Fatalf("the library's lock: %v, %v", ok, err)
	}
	defer func() { _ = library.Release(context.Background()) }()

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.DisableGPU,
		chromedp.Flag("no-first-run", true), chromedp.Flag("disable-background-networking", true),
		chromedp.WindowSize(1100, 500))...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(alloc)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, time.Minute)
	defer cancel()

	row := func(id string) string { return fmt.Sprintf(`tr[data-id=%q]`, id) }
	text := func(sel string) string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("reading %s: %v", sel, err)
		}
		return v
	}
	// Without a key, and with a wrong one, the page says it cannot see the locks, and why.
	blind := func(why string) {
		t.Helper()
		waitFor(t, func() bool { return strings.Contains(text("#status"), why) })
		status, empty := text("#status"), text("#empty")
		if !strings.Contains(status, "cannot see the locks") || !strings.Contains(empty, "Cannot see the locks: "+why) ||
			strings.Contains(status, "live") || strings.Contains(empty, "No lock is held") || text("#locks") != "" {
			t.Fatalf("without a valid key the page says %q and %q, and shows %q", status, empty, text("#locks"))
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(s.url+"/"), chromedp.WaitVisible(chromedp.ID("key"))); err != nil {
		t.Fatalf("the page: %v", err)
	}
	blind("this server needs an API key")
	err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("keyInput"), "wrong"),
		chromedp.Click(chromedp.CSS("#key button")), // as a user would: Submit would bypass the form's handler
		chromedp.WaitVisible(chromedp.ID("key")),
	)
	if err != nil {
		t.Fatalf("a wrong key: %v", err)
	}
	blind("the API key was refused")
	err = chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.ID("keyInput"), s.key),
		chromedp.Click(chromedp.CSS("#key button")),
		chromedp.WaitVisible(chromedp.CSS(row(held.ID))),
	)
	if err != nil {
		t.Fatalf("the page: %v", err)
	}
	if status := text("#status"); status != "live" {
		t.Fatalf("with the key the page's status is %q", status)
	}
	libraryID := ""
	waitFor(t, func() bool {
		var all []relukkoLock
		s.call(t, "GET", "/v1/locks/", "", &all)
		for _, l := range all {
			if l.LockName == "rack/pdu-2" {
				libraryID = l.ID
			}
		}
		return libraryID != ""
	})
	cells := func(id string) []string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](fmt.Sprintf(`[...document.querySelector(%q).cells].map(c => c.textContent)`, row(id))))
		if err != nil {
			t.Fatalf("the cells of %s: %v", id, err)
		}
		return v
	}
	if head := text("thead"); !strings.Contains(head, "Held since") {
		t.Errorf("the table's head %q has no Held since", head)
	}
	if c := cells(libraryID); len(c) < 4 || c[1] != "build-7/4242" || c[2] != "(library)" {
		t.Errorf("the library's lock shows %q; want its label as holder and (library) as its address", c)
	}
	if c := cells(held.ID); len(c) < 4 || c[2] != "127.0.0.1" || !strings.Contains(c[3], fmt.Sprint(time.Now().Year())) {
		t.Errorf("an API lock shows %q; want its address and when it was taken", c)
	}
	table, first := text("#locks"), text(row(held.ID)+" .countdown")
	time.Sleep(1200 * time.Millisecond)
	second := text(row(held.ID) + " .countdown")
	for _, want := range []string{"lab/scope-1", "ci job 7", "rack/switch-4", "alice", fmt.Sprint(held.Token)} {
		if !strings.Contains(table, want) {
			t.Errorf("the table lacks %q:\n%s", want, table)
		}
	}
	if first == second || !strings.HasPrefix(first, "9m") {
		t.Errorf("the countdown went from %q to %q; want it counting down from about 10 minutes", first, second)
	}

	// A lock taken elsewhere appears without a reload; the filter hides what does not match.
	var added relukkoLock
	s.call(t, "POST", "/v1/locks/", `{"lock_name": "lab/scope-2", "creator": "bob"}`, &added)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(row(added.ID))), chromedp.SendKeys(chromedp.ID("prefix"), "lab/"),
		chromedp.Sleep(100*time.Millisecond)); err != nil {
		t.Fatalf("a pushed lock, the filter: %v", err)
	}
	if visible := text("#locks"); !strings.Contains(visible, "lab/scope-2") || strings.Contains(visible, "rack/switch-4") {
		t.Errorf("filtered by lab/, the table shows:\n%s", visible)
	}
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.ArtifactDir(), "page.png")
	if err := os.WriteFile(path, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)

	// Release and extend, each behind a confirmation: declined, nothing changes.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.asked = 0; window.confirm = () => (window.asked++, false); true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row(held.ID)+" button.release")), chromedp.Sleep(300*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	asked, err := chromedp.Run(ctx, chromedp.Evaluate[int](`window.asked`))
	if err != nil {
		t.Fatal(err)
	}
	if code := s.call(t, "GET", "/v1/locks/"+held.ID, "", nil); asked != 1 || code != 200 {
		t.Fatalf("a declined release: asked %d times, the lock answers %d; want asked once and still held", asked, code)
	}
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.confirm = () => true; true`)); err != nil {
		t.Fatal(err)
	}
	err = chromedp.Do(ctx,
		chromedp.Click(chromedp.CSS(row(held.ID)+" button.release")),
		chromedp.WaitNotPresent(chromedp.CSS(row(held.ID))),
		chromedp.Click(chromedp.CSS(row(added.ID)+" button.extend")),
	)
	if err != nil {
		t.Fatalf("release and extend: %v", err)
	}
	var e relukkoError
	if code := s.call(t, "GET", "/v1/locks/"+held.ID, "", &e); code != 422 {
		t.Fatalf("the lock released from the page answers %d", code)
	}
	waitFor(t, func() bool {
		var l relukkoLock
		s.call(t, "GET", "/v1/locks/"+added.ID, "", &l)
		exp, err := time.Parse(time.RFC3339Nano, l.ExpiresAt)
		return err == nil && time.Until(exp) > 14*time.Minute
	})

	// An expiry decades ahead, as Relukko's users pin a resource while they debug.
	if _, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.prompt = () => "2099-12-31T12:34:56.789Z"; true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS(row(added.ID)+" button.expire"))); err != nil {
		t.Fatalf("expire at: %v", err)
	}
	years := fmt.Sprintf("%dy ", time.Until(time.Date(2099, 12, 31, 12, 34, 56, 0, time.UTC))/(365*24*time.Hour))
	waitFor(t, func() bool {
		var l relukkoLock
		s.call(t, "GET", "/v1/locks/"+added.ID, "", &l)
		return l.ExpiresAt == "2099-12-31T12:34:56.789Z" && strings.HasPrefix(text(row(added.ID)+" .countdown"), years)
	})
}
