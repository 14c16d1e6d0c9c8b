//go:build !race

package bifrost

// raceDetector is set in a build with the race detector, which changes what
// allocates (sync.Pool drops items at random, for one).
const raceDetector = false
