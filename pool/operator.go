package pool

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bifrost-proxy/bifrost/recovery"
)

// This file holds what the admin API and the status page share to answer
// an operator's request: the action it asks for, read from the request,
// and the JSON answer. Their errors are caddy.APIError values, which the
// admin API returns as they are and the status page writes as its own
// JSON errors.

// maxOperatorBody bounds the body of an operator request.
const maxOperatorBody = 4 << 10

// maxReason bounds the reason an operator gives for an isolation, in
// bytes.
const maxReason = 200

// Operate performs the operator action named action on w, as an admin
// API or status page request r asks for it: "isolate" reads an optional
// duration and reason from the query or a JSON body (see Act). It returns
// a caddy.APIError for a request it refuses.
func Operate(w *Worker, action string, r *http.Request) error {
	var (
		d      time.Duration
		reason string
	)
	if action == "isolate" {
		var err error
		if d, reason, err = parseIsolate(r); err != nil {
			return err
		}
	}
	switch err := Act(w, action, d, reason); {
	case errors.Is(err, ErrNoPool):
		return RequestError(http.StatusNotFound, "worker %s has no active pool", w.ID)
	case errors.Is(err, ErrUnknownAction):
		return RequestError(http.StatusNotFound, "unknown worker action %q (want isolate, restore or reset)", action)
	case err != nil:
		return RequestError(http.StatusBadRequest, "%v", err)
	}
	return nil
}

// parseIsolate reads the optional duration and reason of an isolate
// request, from the query or a JSON body.
func parseIsolate(r *http.Request) (time.Duration, string, error) {
	var body struct {
		Duration string `json:"duration"`
		Reason   string `json:"reason"`
	}
	data, err := io.ReadAll(io.LimitReader(r.Body, maxOperatorBody+1))
	if err != nil {
		return 0, "", RequestError(http.StatusBadRequest, "reading body: %v", err)
	}
	if len(data) > maxOperatorBody {
		return 0, "", RequestError(http.StatusRequestEntityTooLarge, "body larger than %d bytes", maxOperatorBody)
	}
	if len(strings.TrimSpace(string(data))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&body); err != nil {
			return 0, "", RequestError(http.StatusBadRequest, "body: %v", err)
		}
	}
	if q := r.URL.Query().Get("duration"); q != "" {
		body.Duration = q
	}
	var d time.Duration
	if body.Duration != "" {
		d, err = caddy.ParseDuration(body.Duration)
		if err != nil || d <= 0 {
			return 0, "", RequestError(http.StatusBadRequest, "duration: %q is not a positive duration", body.Duration)
		}
		if d > MaxIsolateDuration {
			return 0, "", RequestError(http.StatusBadRequest, "duration: %q is longer than the limit of 24h for an operator isolation", body.Duration)
		}
	}
	reason := "isolated by an operator"
	if body.Reason != "" {
		reason = recovery.Truncate(body.Reason, maxReason)
	}
	return d, reason, nil
}

// apiError builds the error Caddy's admin server answers as JSON. It must
// be returned as is: Caddy finds it with a type assertion, not errors.As.
func RequestError(status int, format string, args ...any) error {
	return caddy.APIError{HTTPStatus: status, Err: fmt.Errorf(format, args...)}
}

// WriteJSON answers v as JSON with the given status code. It encodes v
// before it writes anything, so that a value it cannot encode is answered
// with the caddy.APIError it returns, not half an answer.
func WriteJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: fmt.Errorf("encoding the answer: %w", err)}
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(code)
	_, _ = w.Write(b)
	return nil
}
