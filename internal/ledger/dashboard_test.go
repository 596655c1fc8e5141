package ledger_test

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"
)

const dashboardPath = "../../deploy/grafana/syncd-analytics.json"

type grafanaDatasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type grafanaPanel struct {
	ID         int                `json:"id"`
	Title      string             `json:"title"`
	Type       string             `json:"type"`
	Datasource *grafanaDatasource `json:"datasource"`
	Targets    []struct {
		Datasource *grafanaDatasource `json:"datasource"`
		RawSQL     string             `json:"rawSql"`
	} `json:"targets"`
	Panels []grafanaPanel `json:"panels"` // inside a row
}

type grafanaDashboard struct {
	UID        string         `json:"uid"`
	Title      string         `json:"title"`
	Panels     []grafanaPanel `json:"panels"`
	Templating struct {
		List []struct {
			Name       string             `json:"name"`
			Type       string             `json:"type"`
			Query      any                `json:"query"`
			Datasource *grafanaDatasource `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
}

const clickhousePlugin = "grafana-clickhouse-datasource"

func readDashboard(t *testing.T) grafanaDashboard {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d grafanaDashboard
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// panelSQL is every panel's query, by panel title.
func panelSQL(d grafanaDashboard) map[string]string {
	out := map[string]string{}
	var walk func([]grafanaPanel)
	walk = func(ps []grafanaPanel) {
		for _, p := range ps {
			for _, tg := range p.Targets {
				out[p.Title] = tg.RawSQL
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return out
}

// The dashboard is valid JSON for the ClickHouse plugin, with the data source
// chosen through a variable, and every panel has one SQL query.
func TestGrafanaDashboardShape(t *testing.T) {
	d := readDashboard(t)
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard needs a uid and a title")
	}
	hasDS := false
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Name == "datasource" && v.Query == clickhousePlugin {
			hasDS = true
		}
		if v.Type == "query" && (v.Datasource == nil || v.Datasource.UID != "${datasource}") {
			t.Errorf("variable %s does not query the ${datasource} variable", v.Name)
		}
	}
	if !hasDS {
		t.Errorf("no datasource variable of type %s", clickhousePlugin)
	}
	if len(d.Panels) < 4 {
		t.Fatalf("%d panels", len(d.Panels))
	}
	ids := map[int]bool{}
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if len(p.Targets) != 1 || strings.TrimSpace(p.Targets[0].RawSQL) == "" {
			t.Errorf("panel %q: want one target with rawSql", p.Title)
			continue
		}
		for _, ds := range []*grafanaDatasource{p.Datasource, p.Targets[0].Datasource} {
			if ds == nil || ds.Type != clickhousePlugin || ds.UID != "${datasource}" {
				t.Errorf("panel %q: datasource %+v, want %s via ${datasource}", p.Title, ds, clickhousePlugin)
			}
		}
	}
}

// grafanaMacros turns the plugin's macros and variables into plain SQL for
// ClickHouse: the last two years, and every currency.
var grafanaMacros = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`\$__timeFilter\((\w+)\)`), "$1 >= now() - 86400 * 730 AND $1 <= now()"},
	{regexp.MustCompile(`\$__dateFilter\((\w+)\)`), "$1 >= toDate(now(), 'UTC') - 730 AND $1 <= toDate(now(), 'UTC')"},
	{regexp.MustCompile(`\$\{currency:singlequote\}`), "'eur', 'jpy', 'kwd', 'usd'"},
}

func expandMacros(sql string) string {
	for _, m := range grafanaMacros {
		sql = m.re.ReplaceAllString(sql, m.with)
	}
	return sql
}

var fromTable = regexp.MustCompile(`(?i)\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_.]*)`)

// checkDashboardQueries runs every panel's and variable's query on w's data:
// each names only tables and views the schema has, and answers with rows.
func checkDashboardQueries(t *testing.T, w *world) {
	d := readDashboard(t)
	objects := map[string]bool{}
	for _, r := range query(t, w.conn, "SELECT name FROM system.tables WHERE database = currentDatabase()").Rows {
		objects[r[0]] = true
	}
	queries := panelSQL(d)
	for _, v := range d.Templating.List {
		if s, ok := v.Query.(string); ok && v.Type == "query" {
			queries["variable "+v.Name] = s
		}
	}
	for _, title := range sortedKeys(queries) {
		sql := expandMacros(queries[title])
		if strings.Contains(sql, "$") {
			t.Errorf("%s: a Grafana macro or variable the test does not expand:\n%s", title, sql)
			continue
		}
		for _, m := range fromTable.FindAllStringSubmatch(sql, -1) {
			if !objects[m[1]] {
				t.Errorf("%s: reads %s, which the schema does not have", title, m[1])
			}
		}
		if got := query(t, w.conn, sql); len(got.Rows) == 0 {
			t.Errorf("%s: no rows on emulator data:\n%s", title, sql)
		}
	}
}
