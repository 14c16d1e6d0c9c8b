package pool

import (
	"time"

	"github.com/bifrost-proxy/bifrost/recovery"
)

// Incident is the contextual error of a failure of kind k that is not one
// try's (a worker that could not be provisioned, a failed probe, a hang,
// reinstatements that ran out), with the kind's severity and suggested
// action; the caller adds the error or another action if it has them.
func Incident(k recovery.Kind, w Ref, component, operation, msg string) recovery.ContextualError {
	return recovery.ContextualError{
		Kind:      k,
		Severity:  k.Severity(),
		Action:    k.SuggestedRecovery(),
		Message:   msg,
		Context:   recovery.ErrorContext{Component: component, Operation: operation, Pool: w.Pool, WorkerID: w.ID},
		Timestamp: time.Now(),
	}
}

// Ref names a worker: its pool and id.
type Ref struct{ Pool, ID string }

// Ref returns the name of w.
func (w *Worker) Ref() Ref { return Ref{Pool: w.Pool, ID: w.ID} }

// Book records a classified error in the pool's history and counts it in
// the errors metric of the pool's reporter.
func (p *Pool) Book(ce recovery.ContextualError) {
	p.Manager.Record(ce)
	if rep := p.reporter(); rep.Error != nil {
		rep.Error(ce.Context.Pool, ce.Context.WorkerID, ce.Kind, ce.Severity)
	}
}

// reporter returns the newest user's reporter.
func (p *Pool) reporter() Reporter {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.users) == 0 {
		return Reporter{}
	}
	return p.users[len(p.users)-1].Reporter()
}
