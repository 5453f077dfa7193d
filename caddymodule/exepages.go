package caddymodule

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// exePagesAfter is how long after this module is first provisioned the
// process hands the pages of its own executable back to the kernel.
const exePagesAfter = 30 * time.Second

var exePagesOnce sync.Once

// releaseExePagesLater pages out, once per process and exePagesAfter
// after the first call, the resident pages of the process's executable
// file (exepages_linux.go). Caddy with its standard modules is a binary
// of about 60 MiB of code and data, and starting it leaves almost all of
// it resident (the kernel maps ahead of every fault), 51 MiB of file-
// backed RSS before the first request, most of it code no request runs
// (other modules' provisioning, the config adapters, the CLI). Handed
// back once, only what requests use comes back, on its first use.
func releaseExePagesLater(log *zap.Logger) {
	exePagesOnce.Do(func() {
		time.AfterFunc(exePagesAfter, func() {
			n, err := releaseExePages()
			if err != nil {
				log.Debug("not releasing the executable's pages", zap.Error(err))
				return
			}
			log.Debug("released the executable's pages", zap.Int64("bytes", n))
		})
	})
}
