package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strings"
	"time"
)

// upstreamTry is one round trip from the proxy to an upstream, as Caddy's
// reverse_proxy logs it at debug level ("upstream roundtrip"). Bifrost's
// workers are reverse_proxy handlers, so the same line is logged for every
// try of every contender, refused connects included: it is the one count
// of upstream traffic that sees connects a closed port refused.
type upstreamTry struct {
	Start    time.Time
	Upstream string
	Method   string
	ID       string
	Status   int
	Err      string
}

// logNote is a log line worth reporting: a warning or worse from the
// proxy, or a Bifrost isolation event.
type logNote struct {
	Time   time.Time `json:"time"`
	Level  string    `json:"level"`
	Logger string    `json:"logger"`
	Msg    string    `json:"msg"`
	Detail string    `json:"detail,omitempty"`
}

// logLine is the part of a Caddy JSON log line the suite reads.
type logLine struct {
	Level    string  `json:"level"`
	TS       float64 `json:"ts"`
	Logger   string  `json:"logger"`
	Msg      string  `json:"msg"`
	Upstream string  `json:"upstream"`
	Duration float64 `json:"duration"`
	Status   int     `json:"status"`
	Error    string  `json:"error"`
	Worker   string  `json:"worker"`
	Reason   string  `json:"reason"`
	Request  struct {
		Method  string              `json:"method"`
		Headers map[string][]string `json:"headers"`
	} `json:"request"`
}

// maxNotes bounds the notes kept from one log.
const maxNotes = 200

// readTries reads the upstream tries and the notable lines of a debug log.
func readTries(path string) ([]upstreamTry, []logNote, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("reading proxy log: %w", err)
	}
	defer f.Close()
	var tries []upstreamTry
	var notes []logNote
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l logLine
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue
		}
		end := fromUnix(l.TS)
		if l.Msg == "upstream roundtrip" {
			tries = append(tries, upstreamTry{
				Start:    end.Add(-time.Duration(l.Duration * float64(time.Second))),
				Upstream: l.Upstream,
				Method:   l.Request.Method,
				ID:       firstHeader(l.Request.Headers, "X-Request-Id"),
				Status:   l.Status,
				Err:      l.Error,
			})
			continue
		}
		if notable(l) && len(notes) < maxNotes {
			notes = append(notes, logNote{Time: end, Level: l.Level, Logger: l.Logger, Msg: l.Msg, Detail: detail(l)})
		}
	}
	if err := sc.Err(); err != nil {
		return tries, notes, fmt.Errorf("reading proxy log: %w", err)
	}
	return tries, notes, nil
}

// notable reports a line worth keeping: a warning or worse, or an
// isolation event.
func notable(l logLine) bool {
	switch l.Level {
	case "warn", "error", "dpanic", "panic", "fatal":
		return true
	}
	return strings.Contains(l.Msg, "isolated") || strings.Contains(l.Msg, "restored")
}

func detail(l logLine) string {
	var parts []string
	for _, kv := range [][2]string{{"worker", l.Worker}, {"upstream", l.Upstream}, {"reason", l.Reason}, {"error", l.Error}} {
		if kv[1] != "" {
			parts = append(parts, kv[0]+"="+kv[1])
		}
	}
	return strings.Join(parts, " ")
}

func firstHeader(h map[string][]string, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// fromUnix converts Caddy's float seconds to a time.
func fromUnix(ts float64) time.Time {
	sec, frac := math.Modf(ts)
	return time.Unix(int64(sec), int64(frac*1e9))
}

// scanPanics returns the lines of a file that mention a panic, at most
// max of them.
func scanPanics(path string, max int) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() && len(out) < max {
		line := sc.Text()
		if strings.Contains(line, "panic") || strings.Contains(line, "goroutine ") && strings.Contains(line, "[running]") {
			if len(line) > 500 {
				line = line[:500]
			}
			out = append(out, line)
		}
	}
	return out
}
