package testenv

import (
	"fmt"
	"os"
)

// NginxConf returns an nginx.conf for one nginx in the foreground that
// proxies 127.0.0.1:port to the upstream block sdpipe: dir is its prefix
// (the pid file, the error log errorLog and the temp folders go there),
// upstream the block's servers ("server 127.0.0.1:8081; server …;"), and
// extra more directives of the proxied location.
func NginxConf(dir, errorLog string, port int, upstream, extra string) string {
	user := ""
	if os.Geteuid() == 0 {
		user = "user root;" // the workers must reach the temp dir
	}
	return fmt.Sprintf(`%[1]s
worker_processes 1;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/%[3]s warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[2]s/body;
  proxy_temp_path %[2]s/proxy;
  fastcgi_temp_path %[2]s/fastcgi;
  uwsgi_temp_path %[2]s/uwsgi;
  scgi_temp_path %[2]s/scgi;
  upstream sdpipe { %[4]s }
  server {
    listen 127.0.0.1:%[5]d;
    client_max_body_size 16m;
    location / {
      proxy_pass http://sdpipe;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_read_timeout 120s;
      %[6]s
    }
  }
}
`, user, dir, errorLog, upstream, port, extra)
}
