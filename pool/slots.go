package pool

// TakeSlot reserves one of the worker's MaxRequests slots for a try and
// reports whether one was free; a worker without a limit always has one.
// Two tries racing for the last slot never both get it. Each TakeSlot
// that reports true is paired with one ReleaseSlot.
func (w *Worker) TakeSlot() bool {
	n := w.Slots.Add(1)
	if limit := w.MaxRequests.Load(); limit > 0 && n > limit {
		w.Slots.Add(-1)
		return false
	}
	return true
}

// ReleaseSlot frees a slot taken by TakeSlot.
func (w *Worker) ReleaseSlot() { w.Slots.Add(-1) }

// Full reports whether every one of the worker's MaxRequests slots is
// taken: a new try would have to wait (connection_pool_exhausted).
func (w *Worker) Full() bool {
	limit := w.MaxRequests.Load()
	return limit > 0 && w.Slots.Load() >= limit
}
