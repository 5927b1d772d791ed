#!/bin/sh
# Copies the console's npm libraries (minified dist files and their licenses) from web/node_modules
# into DEST, the folder the API serves them from: uploader/console/vendor (`make console`, Dockerfile).
set -eu
cd "$(dirname "$0")/node_modules"
dest=$1
mkdir -p "$dest"
cp tus-js-client/dist/tus.min.js "$dest/tus.min.js"
cp tus-js-client/LICENSE "$dest/tus-js-client.LICENSE"
cp hls.js/dist/hls.min.js "$dest/hls.min.js"
cp hls.js/LICENSE "$dest/hls.js.LICENSE"
