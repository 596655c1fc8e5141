// Package schema holds syncd's ClickHouse migrations, numbered .sql files
// embedded in the binary and applied in order by `syncd migrate`.
//
// A migration must be idempotent (CREATE … IF NOT EXISTS and the like): two
// pods may apply the same one at once. Statements are separated by a
// semicolon at the end of a line.
package schema

import (
	"embed"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
)

//go:embed *.sql
var files embed.FS

// Migration is one numbered file.
type Migration struct {
	Version    uint32
	Name       string
	Statements []string
}

// Migrations returns every embedded migration in version order.
func Migrations() ([]Migration, error) {
	return load(files)
}

func load(fsys fs.FS) ([]Migration, error) {
	names, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		return nil, err
	}
	var out []Migration
	seen := map[uint32]string{}
	for _, name := range names {
		num, rest, ok := strings.Cut(name, "_")
		v, err := strconv.ParseUint(num, 10, 32)
		if !ok || err != nil || v == 0 {
			return nil, fmt.Errorf("migration %s: name must be NNNN_description.sql", name)
		}
		if prev, dup := seen[uint32(v)]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, name, v)
		}
		seen[uint32(v)] = name
		body, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		stmts := Split(string(body))
		if len(stmts) == 0 {
			return nil, fmt.Errorf("migration %s has no statements", name)
		}
		out = append(out, Migration{Version: uint32(v), Name: strings.TrimSuffix(rest, ".sql"), Statements: stmts})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Split cuts a script into statements at semicolons that end a line,
// dropping comment-only lines.
func Split(script string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(script, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			if s := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}
