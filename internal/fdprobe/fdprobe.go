// Package fdprobe tells, in three system calls, whether the process still
// has a given number of file descriptors free below its limit. Two guards
// ask it: the metadata database's writes (cache/internal/fdguard), which
// must not meet the limit halfway, and the listener wrapper that keeps
// connections from taking the last descriptors (caddymodule's
// oci_fd_reserve).
package fdprobe

// maxProbedFD bounds the number Free asks the kernel for: the kernel
// grows the process's descriptor table to the highest number asked (8
// bytes a slot), and a limit of a million (Docker's) would cost 8 MiB.
// Past it the room is kept below this number instead: at most about
// 131,000 descriptors in use, and most of a million still free.
const maxProbedFD = 1 << 17
