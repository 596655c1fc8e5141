package row

import (
	"math"
	"time"
)

// ClickHouse's DateTime is a UInt32 of seconds since 1970-01-01 00:00:00
// UTC. clickhouse-go writes a time outside it without complaint, modulo
// 2^32 (2106-02-07 06:28:16 is stored as 1970-01-01 00:00:00), so a
// normaliser refuses such a time rather than store another one.
const dateTimeRange = "ClickHouse's DateTime range, 1970-01-01T00:00:00Z to 2106-02-07T06:28:15Z"

// FitsDateTime says whether t, in whole seconds, is a value a DateTime
// column holds.
func FitsDateTime(t time.Time) bool {
	return unixFitsDateTime(t.Unix())
}

func unixFitsDateTime(sec int64) bool {
	return sec >= 0 && sec <= math.MaxUint32
}
