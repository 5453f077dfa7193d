package blobfile

import "os"

// PendingFile is a file being created on its own goroutine, so that a
// fill can create its temp file while its source's request is in flight:
// after the answer the create (a wait on the filesystem's journal, the
// longer while an earlier fill's sync is writing) would stand between
// upstream's first byte and the client's.
type PendingFile struct {
	done chan struct{}
	file *os.File
	err  error
}

// CreateAsync starts create on its own goroutine.
func CreateAsync(create func() (*os.File, error)) *PendingFile {
	p := &PendingFile{done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.file, p.err = create()
	}()
	return p
}

// Take waits for the file and returns it (the caller's from now on) or
// the create's error.
func (p *PendingFile) Take() (*os.File, error) {
	<-p.done
	return p.file, p.err
}

// Drop waits for the file and removes it: its fill will not write.
func (p *PendingFile) Drop() {
	if file, err := p.Take(); err == nil {
		file.Close()
		os.Remove(file.Name())
	}
}
