// Package deploy_test checks that the container image is built the way the
// tests and the Makefile build syncd. The image itself needs a Docker engine,
// which the development machines lack; the Dockerfile's build command does not.
package deploy_test

import (
	"bufio"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
)

const (
	repoRoot   = ".."
	mainPkg    = "./cmd/syncd"
	versionPkg = "github.com/syncd/syncd/internal/version"
)

// dockerfile is the part of the Dockerfile the checks need.
type dockerfile struct {
	froms      []string          // images, in stage order
	args       map[string]string // ARG defaults
	user       string            // the last USER
	entrypoint string            // as written
	cmd        string
	build      buildCommand
}

// buildCommand is one `go build` invocation.
type buildCommand struct {
	env     map[string]string // VAR=value words before `go`
	flags   []string          // arguments between `build` and the package
	ldflags string
	pkg     string
}

func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	d := dockerfile{args: map[string]string{}}
	found := false
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		instr, rest, _ := strings.Cut(line, " ")
		rest = strings.TrimSpace(rest)
		switch strings.ToUpper(instr) {
		case "FROM":
			words := strings.Fields(rest)
			words = slices.DeleteFunc(words, func(w string) bool { return strings.HasPrefix(w, "--") })
			d.froms = append(d.froms, words[0])
		case "ARG":
			name, def, _ := strings.Cut(rest, "=")
			d.args[name] = def
		case "USER":
			d.user = rest
		case "ENTRYPOINT":
			d.entrypoint = rest
		case "CMD":
			d.cmd = rest
		case "RUN":
			if !strings.Contains(rest, "go build") {
				continue
			}
			if found {
				t.Fatal("the Dockerfile runs go build twice")
			}
			found = true
			d.build = parseBuild(t, shellWords(t, rest))
		}
	}
	if !found {
		t.Fatal("the Dockerfile has no RUN … go build")
	}
	return d
}

// shellWords splits a command line the way sh would for the quoting the
// Dockerfile and the Makefile use: spaces, double and single quotes.
func shellWords(t *testing.T, s string) []string {
	t.Helper()
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range s {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '"' || r == '\'':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("unbalanced quote in %q", s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

func parseBuild(t *testing.T, words []string) buildCommand {
	t.Helper()
	bc := buildCommand{env: map[string]string{}}
	i := 0
	for ; i < len(words) && words[i] != "go"; i++ {
		if strings.HasPrefix(words[i], "--mount=") || words[i] == "env" {
			continue
		}
		if k, v, ok := strings.Cut(words[i], "="); ok {
			bc.env[k] = v
		}
	}
	if i+1 >= len(words) || words[i+1] != "build" {
		t.Fatalf("no `go build` in %q", words)
	}
	rest := words[i+2:]
	for j := 0; j < len(rest); j++ {
		w := rest[j]
		switch {
		case w == "-ldflags" && j+1 < len(rest):
			bc.ldflags = rest[j+1]
			j++
		case strings.HasPrefix(w, "-ldflags="):
			bc.ldflags = strings.TrimPrefix(w, "-ldflags=")
		case w == "-o" && j+1 < len(rest):
			j++ // the output path is the builder's business
		case strings.HasPrefix(w, "-"):
			bc.flags = append(bc.flags, w)
		default:
			bc.pkg = w
		}
	}
	return bc
}

var xFlag = regexp.MustCompile(`-X\s+(\S+?)=(\S*)`)

// stamped returns the -X variables of an ldflags string, name → value.
func stamped(ldflags string) map[string]string {
	vars := map[string]string{}
	for _, m := range xFlag.FindAllStringSubmatch(ldflags, -1) {
		vars[m[1]] = m[2]
	}
	return vars
}

func TestDockerfile(t *testing.T) {
	d := readDockerfile(t)
	if len(d.froms) < 2 || !strings.HasPrefix(d.froms[0], "golang:1.26") {
		t.Errorf("stages %v: want a golang:1.26 builder and a runtime stage", d.froms)
	}
	if last := d.froms[len(d.froms)-1]; last != "gcr.io/distroless/static-debian12:nonroot" {
		t.Errorf("runtime image %s, want gcr.io/distroless/static-debian12:nonroot", last)
	}
	if !strings.HasPrefix(d.user, "65532") {
		t.Errorf("USER %q, want 65532 (non-root; the chart's runAsUser)", d.user)
	}
	if d.entrypoint != `["/syncd"]` || d.cmd != `["serve"]` {
		t.Errorf(`ENTRYPOINT %s CMD %s, want ["/syncd"] ["serve"]`, d.entrypoint, d.cmd)
	}

	bc := d.build
	if bc.env["CGO_ENABLED"] != "0" {
		t.Errorf("CGO_ENABLED=%q, want 0: the runtime image has no libc", bc.env["CGO_ENABLED"])
	}
	if bc.pkg != mainPkg {
		t.Errorf("builds %q, want %s", bc.pkg, mainPkg)
	}
	if !slices.Contains(bc.flags, "-trimpath") {
		t.Error("no -trimpath")
	}
	vars := stamped(bc.ldflags)
	for _, v := range []string{versionPkg + ".Version", versionPkg + ".Commit"} {
		if _, ok := vars[v]; !ok {
			t.Errorf("ldflags %q do not stamp %s", bc.ldflags, v)
		}
	}
}

// TestDockerfileMatchesMakefile: the image and `make build` stamp the same
// variables of the same package, the same way.
func TestDockerfileMatchesMakefile(t *testing.T) {
	mk := filepath.Join(repoRoot, "Makefile")
	text, err := os.ReadFile(mk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := exec.LookPath("make"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("make is not installed")
		}
		t.Skip("make not installed")
	}
	// What make would run, without running it.
	out, err := exec.Command("make", "-C", repoRoot, "-n", "--always-make", "build", "VERSION=v0.0.0-test", "COMMIT=0123abc").CombinedOutput()
	if err != nil {
		t.Fatalf("make -n build: %v\n%s", err, out)
	}
	var line string
	for _, l := range strings.Split(strings.ReplaceAll(string(out), "\\\n", " "), "\n") {
		if strings.Contains(l, "go build") && strings.Contains(l, "cmd/syncd") {
			line = l
		}
	}
	if line == "" {
		t.Fatalf("make -n build runs no go build of cmd/syncd:\n%s", out)
	}
	// The command may follow `cd … &&` or similar.
	words := shellWords(t, line)
	if i := slices.Index(words, "&&"); i >= 0 && !slices.Contains(words[:i], "build") {
		words = words[i+1:]
	}
	m := parseBuild(t, words)
	d := readDockerfile(t).build

	cgoOff := m.env["CGO_ENABLED"] == "0" || regexp.MustCompile(`(?m)^\s*(export\s+)?CGO_ENABLED\s*[:?]?=\s*0\b`).Match(text)
	if !cgoOff {
		t.Errorf("the Makefile's build does not set CGO_ENABLED=0, so it can differ from the image's static binary (add `export CGO_ENABLED := 0`): %s", line)
	}
	if strings.TrimPrefix(m.pkg, "./") != strings.TrimPrefix(d.pkg, "./") {
		t.Errorf("Makefile builds %s, Dockerfile %s", m.pkg, d.pkg)
	}
	mv, dv := stamped(m.ldflags), stamped(d.ldflags)
	for name := range dv {
		if _, ok := mv[name]; !ok {
			t.Errorf("the Dockerfile stamps %s, the Makefile does not (%q)", name, m.ldflags)
		}
	}
	for name := range mv {
		if _, ok := dv[name]; !ok {
			t.Errorf("the Makefile stamps %s, the Dockerfile does not", name)
		}
	}
	if mv[versionPkg+".Version"] != "v0.0.0-test" {
		t.Errorf("make build VERSION=v0.0.0-test stamps Version=%q", mv[versionPkg+".Version"])
	}
	// -trimpath and -s -w change file paths and symbols, not behaviour.
	if slices.Contains(d.flags, "-trimpath") != slices.Contains(m.flags, "-trimpath") {
		t.Logf("-trimpath differs: Makefile %v, Dockerfile %v", m.flags, d.flags)
	}
}

// TestDockerfileBuild runs the Dockerfile's go build on this machine and
// checks the result is a static binary that reports the stamped version.
func TestDockerfileBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	d := readDockerfile(t)
	vars := map[string]string{"VERSION": "v9.9.9-imagetest", "COMMIT": "feedc0de", "TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string {
			if v, ok := vars[k]; ok {
				return v
			}
			return d.args[k]
		})
	}
	bin := filepath.Join(t.TempDir(), "syncd")
	args := []string{"build"}
	for _, f := range d.build.flags {
		args = append(args, expand(f))
	}
	args = append(args, "-ldflags", expand(d.build.ldflags), "-o", bin, d.build.pkg)
	cmd := exec.Command("go", args...)
	cmd.Dir = repoRoot
	cmd.Env = os.Environ()
	for k, v := range d.build.env {
		cmd.Env = append(cmd.Env, k+"="+expand(v))
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}

	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("syncd version: %v\n%s", err, out)
	}
	for _, want := range []string{"v9.9.9-imagetest", "feedc0de"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("syncd version prints %q, want it to contain %s", out, want)
		}
	}

	if runtime.GOOS == "linux" {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the binary is dynamically linked; distroless/static has no libc")
			}
		}
	}
}
