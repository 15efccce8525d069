#!/bin/sh
# One step of the claims pipeline for one document: `step.sh STEP DOC`.
# OCR fails for a deterministic 3 % of the documents (every 33rd) until the "legacy encodings"
# are installed: `touch examples/claims/encodings-installed` (the fix), then redrive.
# The output step appends the document id to $CLAIMS_OUT: one line per finished document.
set -eu
step=$1 doc=$2
n=$(( 1${doc#CLM-} - 1000000 ))
case $step in
ocr)
    if [ $((n % 33)) -eq 0 ] && [ ! -e "${CLAIMS_FIX:-examples/claims/encodings-installed}" ]; then
        echo "unsupported encoding: $doc is in a legacy code page" >&2
        exit 3
    fi ;;
classify)
    if [ $((n % 2)) -eq 0 ]; then class=auto; else class=property; fi
    printf '{"doc":"%s","class":"%s"}' "$doc" "$class" > "$TROUPE_OUTPUT"
    exit 0 ;;
output)
    echo "$doc" >> "${CLAIMS_OUT:-claims-out.txt}"
    ;;
esac
printf '{"doc":"%s","step":"%s"}' "$doc" "$step" > "$TROUPE_OUTPUT"
