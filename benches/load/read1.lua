-- Audited single-field read: customer service reads a phone number masked.
package.path = os.getenv("PIIVAULT_BENCH_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local ids
function init(args) c.setup("PIIVAULT_BENCH_CS_TOKEN", "service"); ids = c.load_ids() end
function request()
  return wrk.format("GET", "/v1/subjects/" .. ids[math.random(#ids)] .. "?fields=phone")
end
