package chserver

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Engine names which ClickHouse a Server runs.
type Engine string

const (
	// EngineServer is an installed ClickHouse server binary: Debian's
	// clickhouse-server 18.16.1, or a clickhouse-server or single clickhouse
	// binary on PATH (FindBinary).
	EngineServer Engine = "server"
	// EngineChDB is the ClickHouse 26.7 engine shipped as libchdb.so in the
	// npm package ChDBPackage, run as clickhouse-local with its TCP and HTTP
	// listeners started: one passwordless user, loopback only.
	EngineChDB Engine = "chdb"
)

// EnvEngine names the variable that chooses the engine of the servers the
// tests, make demo and the benchmarks start: "server" (the default) or "chdb".
const EnvEngine = "SYNCD_TEST_CLICKHOUSE"

// ChDBPackage is the npm package, at an exact version, that ships libchdb.so.
const ChDBPackage = "@chdb/lib-linux-x64-gnu@26.7.3-stable.1"

// EngineFromEnv reads EnvEngine through getenv.
func EngineFromEnv(getenv func(string) string) (Engine, error) {
	switch e := Engine(strings.TrimSpace(getenv(EnvEngine))); e {
	case "", EngineServer:
		return EngineServer, nil
	case EngineChDB:
		return EngineChDB, nil
	default:
		return "", fmt.Errorf("%s=%q: want %q (an installed clickhouse-server, Debian's is 18.16) or %q (ClickHouse 26.7 from %s)",
			EnvEngine, string(e), EngineServer, EngineChDB, ChDBPackage)
	}
}

// ChDBDir is where InstallChDB puts libchdb.so and the program that loads
// it: $SYNCD_CHDB_DIR, else a folder named for the package version in the
// user's cache directory.
func ChDBDir(getenv func(string) string) (string, error) {
	if d := getenv("SYNCD_CHDB_DIR"); d != "" {
		return filepath.Abs(d)
	}
	cache := getenv("XDG_CACHE_HOME")
	if cache == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("neither SYNCD_CHDB_DIR, XDG_CACHE_HOME nor HOME is set")
		}
		cache = filepath.Join(home, ".cache")
	}
	version := ChDBPackage[strings.LastIndex(ChDBPackage, "@")+1:]
	return filepath.Join(cache, "syncd", "chdb-"+version), nil
}

const (
	chdbLib    = "libchdb.so"
	chdbLoader = "chdb-server"
)

// findChDB returns the loader that runs libchdb.so, installed by InstallChDB.
func findChDB(getenv func(string) string) (string, error) {
	dir, err := ChDBDir(getenv)
	if err != nil {
		return "", err
	}
	loader := filepath.Join(dir, chdbLoader)
	for _, f := range []string{loader, filepath.Join(dir, chdbLib)} {
		if _, err := os.Stat(f); err != nil {
			return "", fmt.Errorf("ClickHouse 26.7 (%s=%s) is not installed: %s is missing; "+
				"install it with `SYNCD_TEST_CLICKHOUSE=chdb scripts/ensure-clickhouse` "+
				"(npm and cc are needed)", EnvEngine, EngineChDB, f)
		}
	}
	return loader, nil
}

// chdbArgs are the clickhouse-local flags that make the library a server on
// s's ports, keeping its data in s.Dir/data. The last query starts the
// listeners and then never ends, so the process serves until SIGTERM.
func (s *Server) chdbArgs() []string {
	return []string{
		"--path=" + filepath.Join(s.Dir, "data") + "/",
		"--listen_host=127.0.0.1",
		fmt.Sprintf("--tcp_port=%d", s.TCPPort),
		fmt.Sprintf("--http_port=%d", s.HTTPPort),
		// As in the 18.16 server's profile (usersConfig): an idle native
		// connection notices a stopping server within a second.
		"--poll_interval=1",
		"--max_memory_usage=4000000000",
		"--query", "SYSTEM START LISTEN TCP; SYSTEM START LISTEN HTTP; " +
			"SELECT sleepEachRow(1) FROM numbers(1000000000) SETTINGS max_block_size = 1 FORMAT Null",
	}
}

// loaderSource is the whole program that runs libchdb.so: it loads the
// library beside itself and hands its own arguments to clickhouse-local.
const loaderSource = `/* Written by syncd's chserver.InstallChDB: runs libchdb.so (ClickHouse as a
 * library) as clickhouse-local with this program's arguments. */
#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct chdb_result chdb_result;

int main(int argc, char **argv) {
	char self[PATH_MAX], lib[PATH_MAX + 32];
	ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
	if (n < 0) { perror("readlink /proc/self/exe"); return 1; }
	self[n] = 0;
	char *slash = strrchr(self, '/');
	if (slash) *slash = 0;
	snprintf(lib, sizeof lib, "%s/libchdb.so", self);
	void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
	if (!h) { fprintf(stderr, "chdb-server: %s\n", dlerror()); return 1; }
	chdb_result *(*query)(int, char **) = (chdb_result *(*)(int, char **))dlsym(h, "chdb_query_cmdline");
	const char *(*error)(chdb_result *) = (const char *(*)(chdb_result *))dlsym(h, "chdb_result_error");
	if (!query || !error) { fprintf(stderr, "chdb-server: %s lacks chdb_query_cmdline\n", lib); return 1; }
	chdb_result *r = query(argc, argv);
	if (!r) { fprintf(stderr, "chdb-server: clickhouse-local returned no result\n"); return 1; }
	const char *msg = error(r);
	if (msg && *msg) { fprintf(stderr, "chdb-server: %s\n", msg); return 1; }
	return 0;
}
`

// InstallChDB makes the 26.7 engine available in ChDBDir: it fetches
// ChDBPackage with `npm pack` (npm checks the tarball's integrity), takes
// libchdb.so out of it, and compiles the loader with cc. An installed
// engine is left alone. Progress goes to log.
func InstallChDB(ctx context.Context, getenv func(string) string, log io.Writer) (dir string, err error) {
	dir, err = ChDBDir(getenv)
	if err != nil {
		return "", err
	}
	if _, err := findChDB(getenv); err == nil {
		return dir, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	work, err := os.MkdirTemp(dir, "install-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(work)

	fmt.Fprintf(log, "chdb: fetching %s with npm pack (about 180 MB)\n", ChDBPackage)
	npm := exec.CommandContext(ctx, "npm", "pack", "--silent", ChDBPackage)
	npm.Dir, npm.Stderr = work, log
	out, err := npm.Output()
	if err != nil {
		return "", fmt.Errorf("npm pack %s: %w", ChDBPackage, err)
	}
	tarball := filepath.Join(work, strings.TrimSpace(lastLine(string(out))))
	if err := extractFile(tarball, "package/"+chdbLib, filepath.Join(work, chdbLib)); err != nil {
		return "", fmt.Errorf("unpack %s: %w", tarball, err)
	}

	src := filepath.Join(work, "chdb-server.c")
	if err := os.WriteFile(src, []byte(loaderSource), 0o644); err != nil {
		return "", err
	}
	cc := getenv("CC")
	if cc == "" {
		cc = "cc"
	}
	fmt.Fprintf(log, "chdb: compiling the loader with %s\n", cc)
	build := exec.CommandContext(ctx, cc, "-O2", "-o", filepath.Join(work, chdbLoader), src, "-ldl")
	build.Stdout, build.Stderr = log, log
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("compile %s: %w", src, err)
	}
	// The library first, so a loader is never found without it.
	for _, f := range []string{chdbLib, chdbLoader} {
		if err := os.Rename(filepath.Join(work, f), filepath.Join(dir, f)); err != nil {
			return "", err
		}
	}
	fmt.Fprintf(log, "chdb: installed in %s\n", dir)
	return dir, nil
}

func lastLine(s string) string {
	s = strings.TrimRight(s, "\n")
	return s[strings.LastIndex(s, "\n")+1:]
}

// extractFile copies the file name of the gzipped tarball to dst.
func extractFile(tarball, name, dst string) error {
	f, err := os.Open(tarball)
	if err != nil {
		return err
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return fmt.Errorf("no %s in it", name)
		}
		if err != nil {
			return err
		}
		if h.Name != name {
			continue
		}
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, tr); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	}
}
