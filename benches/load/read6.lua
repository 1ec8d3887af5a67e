-- Audited six-field read in clear by a data-subject-request handler.
package.path = os.getenv("PIIVAULT_BENCH_DIR") .. "/?.lua;" .. package.path
local c = require("common")
local ids
function init(args) c.setup("PIIVAULT_BENCH_DSR_TOKEN", "dsr"); ids = c.load_ids() end
function request()
  return wrk.format("GET", "/v1/subjects/" .. ids[math.random(#ids)] ..
    "?fields=name,id_number,phone,email,address,bank_card")
end
