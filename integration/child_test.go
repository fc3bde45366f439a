package integration

import "os"

// isChild reports whether this test binary was started by a multi-process test as one of its
// workers.
func isChild() bool { return os.Getenv("SHYLOCK_CHILD") != "" }

func childMain() int { return 0 }
