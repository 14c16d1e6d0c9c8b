package bifrost

import (
	"context"
	"errors"
	"sync"
	"time"
)

// errWorkerHung marks a try taken back from a worker found hanging.
var errWorkerHung = errors.New("worker found hanging; the try was moved to another worker")

// waitingTries are the tries of a worker that wait for its answer and
// could go to another worker instead: when hang detection finds the
// worker hanging, those that waited longer than the hang threshold are
// taken back (as if their per_try_timeout had passed) and retried
// elsewhere, instead of waiting for the client's own timeout. Tries that
// could not be retried (a POST, a body without a whole copy) are not
// here: they wait for their answer, or for a timeout.
type waitingTries struct {
	mu    sync.Mutex
	tries map[*tryWriter]waitingTry
}

// waitingTry is one try waiting for its answer.
type waitingTry struct {
	start  time.Time
	body   *requestBody
	cancel context.CancelFunc
}

// add registers a try that started at start.
func (wt *waitingTries) add(tw *tryWriter, start time.Time, body *requestBody, cancel context.CancelFunc) {
	wt.mu.Lock()
	if wt.tries == nil {
		wt.tries = make(map[*tryWriter]waitingTry)
	}
	wt.tries[tw] = waitingTry{start: start, body: body, cancel: cancel}
	wt.mu.Unlock()
}

// remove forgets a try that ended; after it returns, the try is never
// taken back.
func (wt *waitingTries) remove(tw *tryWriter) {
	wt.mu.Lock()
	delete(wt.tries, tw)
	wt.mu.Unlock()
}

// takeBack abandons the tries that have waited longer than threshold at
// now without an answer and whose request can still be sent whole, and
// returns how many it took back.
func (wt *waitingTries) takeBack(now time.Time, threshold time.Duration) int {
	wt.mu.Lock()
	defer wt.mu.Unlock()
	n := 0
	for tw, w := range wt.tries {
		if now.Sub(w.start) < threshold || !w.body.replayable() {
			continue
		}
		if tw.timeOut() {
			tw.hung.Store(true)
			w.cancel()
			n++
		}
	}
	return n
}
