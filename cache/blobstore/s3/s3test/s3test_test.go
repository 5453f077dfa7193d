package s3test

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
)

// TestKillRestart: a killed server refuses requests, and Restart brings
// it back on the same endpoint with its buckets and objects.
func TestKillRestart(t *testing.T) {
	srv := Start(t)
	bucket := srv.Bucket(t)
	key := "k"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := srv.client.PutObject(ctx, &awss3.PutObjectInput{Bucket: &bucket, Key: &key,
		Body: bytes.NewReader([]byte("kept"))}); err != nil {
		t.Fatal(err)
	}
	srv.Kill()
	short, cancelShort := context.WithTimeout(ctx, 2*time.Second)
	_, err := srv.client.GetObject(short, &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
	cancelShort()
	if err == nil {
		t.Fatal("GET answered with the server killed")
	}
	srv.Restart(t)
	out, err := srv.client.GetObject(ctx, &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("after Restart: %v", err)
	}
	b, _ := io.ReadAll(out.Body)
	out.Body.Close()
	if string(b) != "kept" {
		t.Errorf("after Restart the object holds %q, want %q", b, "kept")
	}
}
