//go:build ignore

// Modproxy writes modules from this tree into a file-based Go module proxy, as the given
// version, so that "go install module/cmd@version" can be tried before anything is tagged:
//
//	go run .ci/modproxy.go -o DIR -version vX.Y.Z MODULEDIR...
//
// DIR then holds, for each module, <escaped path>/@v/{list, vX.Y.Z.info, vX.Y.Z.mod,
// vX.Y.Z.zip}, the layout GOPROXY=file://DIR reads. A module's files are those git would commit
// (tracked or new, not ignored, still on disk), less those of nested modules, as in a module
// zip made from a tag. The go command checks the zip when it unpacks it.
package main

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
)

func main() {
	out := flag.String("o", "", "the proxy directory to write")
	version := flag.String("version", "", "the version to serve the modules as")
	flag.Parse()
	if *out == "" || !strings.HasPrefix(*version, "v") || flag.NArg() == 0 {
		log.Fatal("usage: go run .ci/modproxy.go -o DIR -version vX.Y.Z MODULEDIR...")
	}
	log.SetFlags(0)
	for _, dir := range flag.Args() {
		if err := write(*out, *version, dir); err != nil {
			log.Fatalf("modproxy: %s: %v", dir, err)
		}
	}
}

func write(out, version, dir string) error {
	gomod, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return err
	}
	modPath, err := modulePath(gomod)
	if err != nil {
		return err
	}
	files, err := moduleFiles(dir)
	if err != nil {
		return err
	}
	vdir := filepath.Join(out, escape(modPath), "@v")
	if err := os.MkdirAll(vdir, 0o755); err != nil {
		return err
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, f := range files {
		w, err := zw.Create(modPath + "@" + version + "/" + f)
		if err != nil {
			return err
		}
		r, err := os.Open(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil {
			return err
		}
		_, err = io.Copy(w, r)
		r.Close()
		if err != nil {
			return err
		}
	}
	if err := zw.Close(); err != nil {
		return err
	}
	info, _ := json.Marshal(map[string]string{"Version": version, "Time": time.Now().UTC().Format(time.RFC3339)})
	for name, data := range map[string][]byte{
		"list":            []byte(version + "\n"),
		version + ".info": info,
		version + ".mod":  gomod,
		version + ".zip":  buf.Bytes(),
	} {
		if err := os.WriteFile(filepath.Join(vdir, name), data, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("%s@%s: %d files\n", modPath, version, len(files))
	return nil
}

// modulePath returns the path a go.mod declares.
func modulePath(gomod []byte) (string, error) {
	for _, line := range strings.Split(string(gomod), "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "module"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			p := strings.TrimSpace(rest)
			if uq, err := strconv.Unquote(p); err == nil {
				p = uq
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("go.mod has no module line")
}

// moduleFiles lists, relative to dir and slash-separated, the files git would commit under dir,
// leaving out those in directories of nested modules.
func moduleFiles(dir string) ([]string, error) {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	listing, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("git ls-files: %v", err)
	}
	nested := map[string]bool{} // directory -> holds a go.mod of its own
	inNested := func(f string) bool {
		for d := path.Dir(f); d != "."; d = path.Dir(d) {
			is, ok := nested[d]
			if !ok {
				_, err := os.Stat(filepath.Join(dir, filepath.FromSlash(d), "go.mod"))
				is = err == nil
				nested[d] = is
			}
			if is {
				return true
			}
		}
		return false
	}
	seen := map[string]bool{}
	var files []string
	for _, f := range strings.Split(string(listing), "\x00") {
		if f == "" || seen[f] || inNested(f) {
			continue
		}
		seen[f] = true
		fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(f)))
		if err != nil || !fi.Mode().IsRegular() { // deleted, a symbolic link or a submodule
			continue
		}
		files = append(files, f)
	}
	return files, nil
}

// escape writes a module path as the proxy protocol does: each capital letter as '!' and its
// lower case.
func escape(p string) string {
	var b strings.Builder
	for _, r := range p {
		if unicode.IsUpper(r) {
			b.WriteByte('!')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}
